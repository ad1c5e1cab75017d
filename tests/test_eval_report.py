"""``pixpref eval`` on the tiny config: report.json ranges, report.md numbers, figures, config errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pixpref.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "eval" / "tiny.yaml"
USERS, PROMPTS, IMAGES = 3, 2, 2  # as in configs/eval/tiny.yaml


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    assert main(["toyworld", "make-pairs", "--users", "6", "--pairs-per-user", "12", "--unseen-fraction", "0.5",
                 "--seed", "0", "--out", str(data)]) == 0
    log = root / "train_log.jsonl"
    log.write_text("\n".join(json.dumps({"step": 10 * i, "wall": 2.0 * i, "loss": 0.7 - 0.01 * i,
                                         "implicit_acc": 0.5 + 0.02 * i}) for i in range(1, 7)) + "\n")
    # a training run's kept checkpoints: the shipped InPO adapter at step 10, the shipped DPO one at 20,
    # and an incomplete checkpoint_30 (no step.json) that must be skipped
    ckrun = root / "ckrun"
    for step, name in ((10, "inpo"), (20, "dpo"), (30, "dpo")):
        shutil.copytree(ROOT / "pixpref" / "pretrained" / "toy" / f"adapter_{name}",
                        ckrun / "checkpoints" / f"checkpoint_{step}" / "user_adapter")
        if step < 30:
            (ckrun / "checkpoints" / f"checkpoint_{step}" / "step.json").write_text(json.dumps({"step": step}))
    shutil.copy(log, ckrun / "train_log.jsonl")
    out = root / "report"
    rc = main(["eval", "--config", str(TINY), "--set", f"data={data}", "--set", f"train_logs.dpo={log}",
               "--set", f"train_logs.inpo={root / 'missing.jsonl'}", "--set", f"checkpoint_runs.run={ckrun}",
               "--set", f"checkpoint_runs.gone={root / 'no_such_run'}",
               "--set", f"checkpoint_users={USERS}", "--set", f"checkpoint_images_per_prompt={IMAGES}",
               "--out", str(out)])
    assert rc == 0
    return {"root": root, "data": data, "out": out, "report": json.loads((out / "report.json").read_text())}


def _check_rate(result: dict, n: int) -> None:
    low, high = result["ci95"]
    assert 0.0 <= low <= result["win_rate"] <= high <= 1.0
    assert result["n"] == n


def test_report_json_keys_and_ranges(run):
    report = run["report"]
    for key in ("command", "date", "config", "setup", "adapters", "few_shot", "interpolation", "training", "users",
                "figures", "grids", "notes", "seconds"):
        assert key in report
    n = USERS * PROMPTS * IMAGES
    assert report["setup"]["comparisons"] == n
    assert set(report["adapters"]) == {"dpo", "inpo"}
    for res in report["adapters"].values():
        _check_rate(res["oracle"], n)
        assert set(res["oracle"]["per_user"]) == {str(i) for i in report["setup"]["user_ids"]}
        assert set(res["scorer"]) == {"aesthetics", "alignment", "detail", "overall", "personal"}
        for dim, result in res["scorer"].items():
            _check_rate(result, n)
            assert 0.0 <= res["agreement"][dim]["rate"] <= 1.0 and res["agreement"][dim]["n"] == n
        assert 0.0 <= res["adherence"]["base"] <= 1.0 and 0.0 <= res["adherence"]["personal"] <= 1.0
    assert [p["k"] for p in report["few_shot"]["points"]] == [1, 2]
    for point in report["few_shot"]["points"]:
        _check_rate(point["oracle"], n)
        _check_rate(point["scorer_personal"], n)
    # the headline k is on the few-shot curve: the same images, the same verdict
    assert report["few_shot"]["points"][1]["oracle"]["win_rate"] == report["adapters"]["dpo"]["oracle"]["win_rate"]
    (curve,) = report["interpolation"]["curves"]
    assert curve["alpha"] == [0.0, 0.5, 1.0] and len(curve["utility_a"]) == len(curve["utility_b"]) == 3
    assert {"base_utility_a", "base_utility_b"} <= set(curve)
    # default pairing "opposed" (its choice of pair is tested in test_ppd_evaluate.py), recorded with the correlation
    assert report["interpolation"]["pairing"] == "opposed" and -1.0 <= curve["taste_correlation"] <= 1.0
    assert {curve["user_a"], curve["user_b"]} <= set(report["setup"]["user_ids"])
    assert report["interpolation"]["summary"]["users"] == 2
    assert len(curve["step_se_a"]) == len(curve["step_se_b"]) == 2 and min(curve["step_se_a"]) >= 0.0
    assert 0.0 <= report["interpolation"]["summary"]["monotone_within_noise"] <= 1.0
    assert len(report["users"]) == USERS and all(u["description"].startswith("user ") for u in report["users"])
    assert set(report["training"]) == {"dpo"} and report["training"]["dpo"]["summary"]["last_step"] == 60
    assert any("missing.jsonl" in note for note in report["notes"])  # a missing log is skipped with a note
    assert any("'gone' not found" in note for note in report["notes"])  # so is a missing checkpoint run


def test_user_offset_skips_users_and_the_saved_scale_is_the_default(run):
    from pixpref.errors import PixprefError
    from pixpref.evaluation.examples import unseen_users

    every = [u.id for u in unseen_users(run["data"], 3)]
    assert [u.id for u in unseen_users(run["data"], 2, offset=1)] == every[1:3]
    with pytest.raises(PixprefError, match="user_offset"):
        unseen_users(run["data"], 3, offset=1)
    # no user_scale in the config: each adapter is judged at the scale saved in its adapter_config.json
    for name, res in run["report"]["adapters"].items():
        saved = json.loads((ROOT / "pixpref" / "pretrained" / "toy" / f"adapter_{name}" / "adapter_config.json")
                           .read_text())["scale"]
        assert res["user_scale"] == saved


def test_mismatched_user_control_for_the_primary_adapter(run):
    adapters = run["report"]["adapters"]
    assert "mismatched_users" not in adapters["inpo"]  # only the primary adapter gets the control
    control = adapters["dpo"]["mismatched_users"]
    assert control["shift"] == USERS // 2
    _check_rate(control["oracle"], USERS * PROMPTS * IMAGES)
    assert control["gap"] == pytest.approx(adapters["dpo"]["oracle"]["win_rate"] - control["oracle"]["win_rate"])
    # the base images are the same, so the base adherence is too; the personalized images are new ones
    assert control["adherence"]["base"] == adapters["dpo"]["adherence"]["base"]
    md = (run["out"] / "report.md").read_text()
    assert "Control (dpo)" in md and f"{control['gap']:+.3f}" in md


def test_checkpoint_curve_judges_each_kept_checkpoint(run):
    cc = run["report"]["checkpoint_curves"]
    curve = cc["curves"]["run"]
    assert curve["step"] == [10, 20]  # the incomplete checkpoint_30 is skipped
    assert curve["wall"] == [2.0, 4.0]  # from the run's train_log.jsonl
    # same users, prompts and noises as the headline: each checkpoint's verdict equals its adapter's
    adapters = run["report"]["adapters"]
    assert curve["win_rate"] == [adapters["inpo"]["oracle"]["win_rate"], adapters["dpo"]["oracle"]["win_rate"]]
    assert cc["comparisons"] == USERS * PROMPTS * IMAGES
    target = cc["target"]["runs"]["run"]
    assert target["best_win_rate"] == max(curve["win_rate"]) and target["last_step"] == 20
    md = (run["out"] / "report.md").read_text()
    assert "## Win rate vs training step" in md and f"| run | 20 | 4 | {curve['win_rate'][1]:.3f} |" in md


def test_checkpoint_selection_and_errors(run):
    from pixpref.errors import PixprefError
    from pixpref.evaluation.checkpoints import checkpoint_adapters

    ckrun = run["root"] / "ckrun"
    assert [s for s, _ in checkpoint_adapters(ckrun)] == [10, 20]
    assert [s for s, _ in checkpoint_adapters(ckrun, [20, 30])] == [20]  # 30 is incomplete
    with pytest.raises(PixprefError, match="no complete checkpoint at steps"):
        checkpoint_adapters(ckrun, [30])
    with pytest.raises(PixprefError, match="no checkpoints/ folder"):
        checkpoint_adapters(run["root"])


def test_steps_to_target_and_ratios():
    from pixpref.evaluation.checkpoints import steps_to_target, target_summary, wall_at

    assert steps_to_target([100, 200, 300], [0.55, 0.62, 0.70], 0.6) == 200
    assert steps_to_target([100, 200], [0.5, 0.59], 0.6) is None
    log = {"step": [10.0, 20.0, 40.0], "wall": [5.0, 10.0, 30.0]}
    assert wall_at(log, 30) == 20.0 and wall_at(log, 5) == 2.5 and wall_at(log, 80) == 60.0 and wall_at({}, 3) is None
    curves = {"dpo": {"step": [100, 200, 300], "win_rate": [0.55, 0.62, 0.7], "wall": [50.0, 100.0, 150.0]},
              "inpo": {"step": [50, 100], "win_rate": [0.61, 0.65], "wall": [200.0, 400.0]},
              "sft": {"step": [100], "win_rate": [0.5], "wall": None}}
    t = target_summary(curves, 0.6)
    assert t["reference"] == "dpo" and t["runs"]["dpo"]["steps"] == 200 and t["runs"]["inpo"]["steps"] == 50
    assert t["ratios"]["inpo/dpo"] == {"steps": 0.25, "wall": 2.0}
    assert t["ratios"]["sft/dpo"] == {"steps": None, "wall": None} and t["runs"]["sft"]["steps"] is None


def test_report_md_has_the_numbers(run):
    md = (run["out"] / "report.md").read_text()
    report = run["report"]
    for name, res in report["adapters"].items():
        low, high = res["oracle"]["ci95"]
        assert f"| {name} | {res['oracle']['win_rate']:.3f} | [{low:.3f}, {high:.3f}] |" in md
        assert f"{res['scorer']['personal']['win_rate']:.3f}" in md
        assert f"{res['agreement']['personal']['rate']:.3f}" in md
    for point in report["few_shot"]["points"]:
        assert f"| {point['k']} | {point['oracle']['win_rate']:.3f} |" in md
    assert report["command"] in md
    assert "missing.jsonl" in md


def test_figures_are_valid_pngs(run):
    report, out = run["report"], run["out"]
    assert set(report["figures"]) == {"few_shot", "interpolation", "training", "checkpoints", "dimensions"}
    assert len(report["grids"]) == 2
    for name in [*report["figures"].values(), *report["grids"].values()]:
        with Image.open(out / name) as im:
            im.verify()
            assert im.format == "PNG"
    with Image.open(out / next(iter(report["grids"].values()))) as im:
        # rows: base + 2 adapters; columns: prompts x images (32 px images, 2 px padding, upscale 3)
        assert im.size == (3 * (PROMPTS * IMAGES * 34 + 2), 3 * (3 * 34 + 2))


def test_misspelt_config_key_exits_2_naming_valid_keys(run, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("images_per_prompt:", "images_per_promt:"))
    rc = main(["eval", "--config", str(bad), "--set", f"data={run['data']}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "images_per_promt" in err and "valid keys" in err and "images_per_prompt" in err
    assert not (tmp_path / "o").exists()


def test_unknown_interpolation_pairing_names_the_valid_ones(run, tmp_path, capsys):
    rc = main(["eval", "--config", str(TINY), "--set", f"data={run['data']}", "--set", "interpolation_pairing=random",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "interpolation_pairing" in err and "opposed" in err and "index" in err
    assert not (tmp_path / "o").exists()


def test_user_chunk_pairs_reads_the_examples_in_chunks(run, tmp_path, capsys):
    import torch

    from pixpref.evaluation.examples import few_shot_examples, unseen_pairs, unseen_users
    from pixpref.evaluation.report import UserEmbeddings
    from pixpref.models.vlm import load_vlm
    from pixpref.personalize.user_encoder import UserEncoder, UserEncoderConfig

    assert run["report"]["setup"]["user_chunk_pairs"] == 0
    users = unseen_users(run["data"], USERS, 0)
    examples = {4: few_shot_examples(unseen_pairs(run["data"], users), 4)}
    spec = json.loads((ROOT / "pixpref" / "pretrained" / "toy" / "adapter_dpo" / "user_encoder.json").read_text())
    whole = UserEmbeddings(users, examples).get(spec, 4)
    chunked = UserEmbeddings(users, examples, chunk_pairs=2).get(spec, 4)
    enc = UserEncoder(*load_vlm("toy", dtype=torch.float32), UserEncoderConfig(pooling=spec["pooling"]))
    first = [examples[4][str(u.id)] for u in users]
    want = (enc.encode([e[:2] for e in first]) + enc.encode([e[2:] for e in first])) / 2
    torch.testing.assert_close(chunked, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(chunked, whole, atol=1e-4)
    rc = main(["eval", "--config", str(TINY), "--set", f"data={run['data']}", "--set", "user_chunk_pairs=-2",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "user_chunk_pairs must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_existing_output_is_refused_without_overwrite(run, capsys):
    before = (run["out"] / "report.json").read_text()
    rc = main(["eval", "--config", str(TINY), "--set", f"data={run['data']}", "--out", str(run["out"])])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--overwrite" in err
    assert (run["out"] / "report.json").read_text() == before


def test_paired_win_rate_and_agreement():
    import numpy as np

    from pixpref.evaluation.judges import agreement, paired_win_rate

    a, b = np.array([2.0, 1.0, 0.0, 5.0]), np.array([1.0, 1.0, 1.0, 4.0])
    r = paired_win_rate(a, b)  # wins 2, tie 1, loss 1
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (2, 1, 1, 4) and r["win_rate"] == 2.5 / 4
    assert r["ci95"][0] < r["win_rate"] < r["ci95"][1] and r["mean_delta"] == 0.25
    agree = agreement(a - b, np.array([0.3, 0.0, 0.2, 0.1]))  # same side in 3 of 4 (the tie counts)
    assert agree["rate"] == 0.75 and agree["n"] == 4


def test_readme_results_section_from_the_report(run):
    """scripts/readme_results.py turns report.json into the README's Results section, numbers included."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_results.py"), str(run["out"] / "report.json")],
                         capture_output=True, text=True, check=True).stdout
    report = run["report"]
    assert out.startswith("## Results")
    for name, res in report["adapters"].items():
        low, high = res["oracle"]["ci95"]
        assert f"| {name} | {res['oracle']['win_rate']:.3f} [{low:.3f}, {high:.3f}] |" in out
    curve = report["checkpoint_curves"]["curves"]["run"]
    assert f"10: {curve['win_rate'][0]:.3f}, 20: {curve['win_rate'][1]:.3f}" in out
    assert "steps to target" in out
    assert f"right direction end to end {report['interpolation']['summary']['right_direction']:.3f}" in out
