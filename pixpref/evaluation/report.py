"""Run every measurement of an evaluation report; write ``report.json``, ``report.md`` and figures.

    from pixpref.config import load_config
    from pixpref.evaluation import EvalConfig, evaluate
    report = evaluate(load_config("configs/eval/toy.yaml", EvalConfig), out="runs/eval_toy")

Steps: check inputs -> the unseen users' few-shot examples and embeddings -> base images (one set of
prompts and noises) -> per adapter: personalized images from the same noises, judged by the oracle and
the scorer -> the few-shot curve and interpolation curves of the primary adapter -> training logs.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pixpref.errors import PixprefError
from pixpref.evaluation.config import EvalConfig, resolve_adapter
from pixpref.io_utils import check_output_path


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class UserEmbeddings:
    """Embeddings of the evaluated users, per (embedding spec, k); each VLM is loaded once."""

    def __init__(self, users: list[Any], examples: dict[int, dict[str, list]], device: str = "cpu",
                 prior: tuple[Any, Any] | None = None, chunk_pairs: int = 0):
        self.users = users
        self.chunk_pairs = chunk_pairs  # VLM sources: pairs per prompt, chunks averaged (0: one prompt)
        self.prior = prior  # (weights, temperatures) of the training users: source "oracle_posterior"
        self.examples = examples  # k -> user id -> k examples
        self.device = device
        self._vlms: dict[str, tuple[Any, Any]] = {}
        self._cache: dict[tuple, Any] = {}

    def get(self, spec: dict[str, Any], k: int):
        """(U, T, D) float32 embeddings for an adapter's ``user_encoder.json`` spec (oracle: true weights)."""
        import torch

        if spec.get("source", "vlm") == "oracle":
            return torch.stack([torch.as_tensor(u.weights_vector(), dtype=torch.float32)[None] for u in self.users])
        if spec.get("source") == "oracle_pairs":  # the pixel oracle's reading of the same k examples
            from pixpref.toyworld.users import examples_contrast

            return torch.stack([torch.as_tensor(examples_contrast(self.examples[k][str(u.id)]), dtype=torch.float32)[None]
                                for u in self.users])
        if spec.get("source") == "oracle_posterior":  # perfect perception of the k examples + the population prior
            from pixpref.toyworld.users import examples_posterior

            if self.prior is None:
                raise PixprefError("source oracle_posterior needs the training users (split 'train' in users.json)")
            w, t = self.prior
            return torch.stack([torch.as_tensor(examples_posterior(self.examples[k][str(u.id)], w, t),
                                                dtype=torch.float32)[None] for u in self.users])
        chunk = 0 if spec["pooling"] == "preference_head" else self.chunk_pairs
        key = (spec["vlm"], spec["pooling"], int(spec.get("generate_tokens", 0)), spec.get("head", "toy"), k, chunk)
        if key not in self._cache:
            from pixpref.personalize.user_encoder import UserEncoder, config_from_spec

            if spec["vlm"] not in self._vlms:
                from pixpref.models.vlm import load_vlm

                self._vlms[spec["vlm"]] = load_vlm(spec["vlm"], dtype=torch.float32, device=self.device)
            model, processor = self._vlms[spec["vlm"]]
            config = config_from_spec(spec, max_pairs=max(8, k), chunk_pairs=chunk)
            encoder = UserEncoder(model, processor, config)
            self._cache[key] = encoder.encode([self.examples[k][str(u.id)] for u in self.users])
        return self._cache[key]


def _adapter_pipeline(config: EvalConfig, folder: Path, base_pipe: Any) -> Any:
    """The base pipeline, or a fresh one with the UNet LoRA trained beside the adapter."""
    if not (folder / "unet_lora.safetensors").is_file():
        return base_pipe
    from pixpref.models.diffusion import load_pipeline
    from pixpref.personalize.pipeline import load_lora

    pipe = load_pipeline(config.base, device=config.device)
    pipe.set_progress_bar_config(disable=True)
    load_lora(pipe.unet, folder)
    return pipe


def _without_per_user(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "per_user"}


def _mismatched_control(pipe: Any, adapter: Any, setup: Any, users: list[Any], emb: Any, base: Any,
                        matched: dict[str, Any]) -> dict[str, Any]:
    """Each user judges images made from another user's embedding (user i gets user (i + U // 2) mod U's).

    A personalizing adapter wins less for the wrong user than for the right one; an adapter that only shifts
    every user the same way (a population taste) wins the same. ``gap`` = matched - mismatched win rate.
    """
    import torch

    from pixpref.evaluation.judges import judge
    from pixpref.personalize.evaluate import personalized_images

    shift = len(users) // 2
    other = torch.roll(emb, shifts=-shift, dims=0)  # row i = user (i + shift) mod U
    verdict = judge(users, personalized_images(pipe, adapter, setup, other), base, setup.prompts)
    return {"shift": shift, "oracle": _without_per_user(verdict["oracle"]), "adherence": verdict["adherence"],
            "gap": matched["win_rate"] - verdict["oracle"]["win_rate"]}


def _checkpoint_curves(config: EvalConfig, runs: dict[str, list], pipe: Any, users: list[Any],
                       embeddings: UserEmbeddings, log: Callable[[str], None]) -> dict[str, Any]:
    """Oracle win rate of every kept checkpoint of each run -> curves, and steps / wall-clock to the target."""
    from pixpref.evaluation.checkpoints import target_summary, wall_at
    from pixpref.evaluation.train_logs import read_train_log
    from pixpref.personalize.adapter import UserAdapter
    from pixpref.personalize.embeddings import read_user_encoder_spec
    from pixpref.personalize.evaluate import EvalSetup, base_images, personalized_images, win_rate

    judged = users[: config.checkpoint_users]
    setup = EvalSetup(prompts=list(config.prompts), seeds=config.checkpoint_images_per_prompt, steps=config.steps,
                      guidance=config.guidance, noise_seed=config.noise_seed, user_scale=config.user_scale,
                      user_guidance=config.user_guidance, user_start=config.user_start,
                      user_end=config.user_end)
    base = base_images(pipe, setup)
    curves: dict[str, dict[str, Any]] = {}
    for name, checkpoints in runs.items():
        run_dir = Path(config.checkpoint_runs[name])
        log_path = run_dir / "train_log.jsonl"
        train_curves = read_train_log(log_path) if log_path.is_file() else {}
        curve: dict[str, Any] = {"run": str(run_dir), "step": [], "win_rate": [], "ci95": [], "wall": []}
        for step, folder in checkpoints:
            apipe = _adapter_pipeline(config, folder, pipe)
            adapter = UserAdapter.from_pretrained(folder, apipe.unet).float().to(apipe.unet.device).eval()
            adapter.requires_grad_(False)
            adapter.install(apipe.unet)
            try:
                emb = embeddings.get(read_user_encoder_spec(folder), config.k)[: len(judged)]
                result = win_rate(judged, personalized_images(apipe, adapter, setup, emb), base, setup.prompts)
            finally:
                adapter.remove(apipe.unet)
            curve["step"].append(step)
            curve["win_rate"].append(result.win_rate)
            curve["ci95"].append(list(result.ci))
            curve["wall"].append(wall_at(train_curves, step))
            log(f"  checkpoint {name} step {step}: oracle win rate {result.win_rate:.3f}")
        if any(w is None for w in curve["wall"]):
            curve["wall"] = None
        curves[name] = curve
    return {"users": len(judged), "images_per_prompt": setup.seeds, "comparisons": len(judged) * len(setup.prompts) * setup.seeds,
            "curves": curves, "target": target_summary(curves, config.win_rate_target)}


def measure(config: EvalConfig, log: Callable[[str], None] = _log) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every measurement -> (report dict, image grids {user id: (rows, P*n, H, W, 3) uint8})."""
    import numpy as np

    from pixpref.evaluation.checkpoints import checkpoint_adapters
    from pixpref.evaluation.examples import few_shot_examples, unseen_pairs, unseen_users
    from pixpref.evaluation.judges import judge
    from pixpref.evaluation.train_logs import load_train_logs
    from pixpref.models.diffusion import load_pipeline
    from pixpref.personalize.adapter import UserAdapter
    from pixpref.personalize.embeddings import read_user_encoder_spec
    from pixpref.personalize.evaluate import (
        EvalSetup,
        base_images,
        interpolation_curve,
        interpolation_summary,
        interpolation_user_pairs,
        personalized_images,
        taste_correlations,
    )
    from pixpref.toyworld.oracle import measure as oracle_measure

    t0 = time.time()
    timings: dict[str, float] = {}

    def lap(name: str, start: float) -> None:
        timings[name] = round(time.time() - start, 2)
        log(f"[eval {time.time() - t0:6.0f}s] {name} done in {timings[name]:.0f}s")

    # 1. check inputs
    data = config.check_data()
    folders = {name: resolve_adapter(value) for name, value in config.adapters.items()}
    specs = {name: read_user_encoder_spec(folder) for name, folder in folders.items()}
    primary = config.primary_adapter
    primary_is_vlm = specs[primary].get("source", "vlm") in ("vlm", "oracle_pairs", "oracle_posterior")  # reads the k examples
    train_logs, notes = load_train_logs(config.train_logs)  # read early: a bad log fails fast
    checkpoint_runs = {}
    for name, run in config.checkpoint_runs.items():
        if not Path(run).exists():  # like a missing training log: the curve is skipped, the report says so
            notes.append(f"checkpoint run {name!r} not found at {run}; its win rate vs step curve is skipped "
                         "(train it with train/train_ppd.py --set train.output_dir=" + str(run) + ")")
            continue
        checkpoint_runs[name] = checkpoint_adapters(run, config.checkpoint_steps or None)
    users = unseen_users(data, config.users, config.user_offset)
    setup = EvalSetup(prompts=list(config.prompts), seeds=config.images_per_prompt, steps=config.steps,
                      guidance=config.guidance, noise_seed=config.noise_seed, user_scale=config.user_scale,
                      user_guidance=config.user_guidance, user_start=config.user_start,
                      user_end=config.user_end)
    u_, p_, n_ = len(users), len(setup.prompts), setup.seeds

    # 2. few-shot examples and user embeddings
    start = time.time()
    ks = sorted({config.k, *(config.few_shot_k if primary_is_vlm else [])})
    pairs = unseen_pairs(data, users)
    examples = {k: few_shot_examples(pairs, k, config.example_seed) for k in ks}
    prior = None
    if any(spec.get("source") == "oracle_posterior" for spec in specs.values()):
        from pixpref.toyworld.users import load_users, training_prior

        prior = training_prior(load_users(data / "users.json").users)[1:]
    embeddings = UserEmbeddings(users, examples, config.device, prior=prior, chunk_pairs=config.user_chunk_pairs)
    scorer_spec = {"source": "vlm", "vlm": config.scorer_vlm, "pooling": config.scorer_pooling}
    if config.scorer:  # a scorer that records how it embeds users overrides the config
        from pixpref.scorer.api import user_encoder_spec

        scorer_spec = user_encoder_spec(config.scorer, scorer_spec)
    lap("user examples", start)

    # 3. models and base images
    start = time.time()
    pipe = load_pipeline(config.base, device=config.device)
    pipe.set_progress_bar_config(disable=True)
    scorer = None
    if config.scorer:
        from pixpref.scorer.api import PreferenceScorer

        scorer = PreferenceScorer.from_pretrained(config.scorer, device=config.device)
    else:
        notes.append("no scorer configured: only the oracle judges")
    base = base_images(pipe, setup)  # (P, n, H, W, 3)
    base_features = oracle_measure(base.reshape(-1, *base.shape[2:]))
    lap("base images", start)

    # 4. each adapter: personalized images at k, judged; few-shot and interpolation for the primary one
    adapters: dict[str, Any] = {}
    few_shot: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    grids: dict[str, list[np.ndarray]] = {str(u.id): [base.reshape(p_ * n_, *base.shape[2:])]
                                          for u in users[: config.grid_users]}
    for name, folder in folders.items():
        start = time.time()
        apipe = _adapter_pipeline(config, folder, pipe)
        adapter = UserAdapter.from_pretrained(folder, apipe.unet).float().to(apipe.unet.device).eval()
        adapter.requires_grad_(False)
        adapter.install(apipe.unet)
        try:
            ks_here = ks if name == primary and primary_is_vlm else [config.k]
            for k in ks_here:
                emb = embeddings.get(specs[name], k)  # (U, T, D)
                scorer_emb = embeddings.get(scorer_spec, k) if scorer is not None else None
                images = personalized_images(apipe, adapter, setup, emb)  # (U, P, n, H, W, 3)
                verdict = judge(users, images, base, setup.prompts, scorer, scorer_emb)
                if k == config.k:
                    window = [adapter.config.start if setup.user_start is None else setup.user_start,
                              adapter.config.end if setup.user_end is None else setup.user_end]
                    adapters[name] = {"folder": str(folder), "user_encoder": specs[name], "k": k,
                                      "user_scale": adapter.config.scale if setup.user_scale is None else setup.user_scale,
                                      "user_window": window, **verdict}
                    for i, uid in enumerate(grids):
                        grids[uid].append(images[i].reshape(p_ * n_, *images.shape[3:]))
                if name == primary and k in config.few_shot_k:
                    point = {"k": k, "oracle": _without_per_user(verdict["oracle"])}
                    if scorer is not None and "personal" in verdict["scorer"]:
                        point["scorer_personal"] = _without_per_user(verdict["scorer"]["personal"])
                        point["agreement_personal"] = verdict["agreement"]["personal"]
                    few_shot.append(point)
                log(f"[eval {time.time() - t0:6.0f}s] {name} k={k}: oracle win rate "
                    f"{verdict['oracle']['win_rate']:.3f}")
            if name == primary and config.mismatched_control and u_ > 1:
                adapters[name]["mismatched_users"] = _mismatched_control(
                    apipe, adapter, setup, users, embeddings.get(specs[name], config.k), base,
                    adapters[name]["oracle"])
                log(f"[eval {time.time() - t0:6.0f}s] {name} k={config.k}, other users' embeddings: oracle win "
                    f"rate {adapters[name]['mismatched_users']['oracle']['win_rate']:.3f}")
            if name == primary:
                emb = embeddings.get(specs[name], config.k)
                base_util = np.stack([u.utility(base_features) for u in users])  # (U, P*n)
                corr = taste_correlations(base_util)
                for i, j in interpolation_user_pairs(config, base_util):
                    a, b = users[i], users[j]
                    curve = interpolation_curve(apipe, adapter, setup, a, b, emb[i], emb[j],
                                                alphas=tuple(config.alphas))
                    curves.append({"user_a": a.id, "user_b": b.id, **curve,
                                   "base_utility_a": float(base_util[i].mean()),
                                   "base_utility_b": float(base_util[j].mean()),
                                   "taste_correlation": float(corr[i, j])})
        finally:
            adapter.remove(apipe.unet)
        lap(f"adapter {name}", start)
    if not primary_is_vlm:
        notes.append(f"primary adapter {primary!r} reads oracle weights, not examples: no few-shot curve")

    # 5. win rate vs step (and wall-clock) of each checkpoint run, on the first checkpoint_users users
    checkpoint_curves = None
    if checkpoint_runs:
        start = time.time()
        checkpoint_curves = _checkpoint_curves(config, checkpoint_runs, pipe, users, embeddings, log)
        lap("checkpoint curves", start)

    # 6. per-user table
    user_rows = []
    for u in users:
        row = {"id": u.id, "archetype": u.archetype, "description": u.describe(),
               "oracle_win_rate": {n: r["oracle"]["per_user"][str(u.id)] for n, r in adapters.items()}}
        if scorer is not None:
            row["scorer_personal_win_rate"] = {n: r["scorer"]["personal"]["per_user"][str(u.id)]
                                               for n, r in adapters.items() if "personal" in r["scorer"]}
        user_rows.append(row)

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "setup": {"data": str(data), "base": config.base, "users": u_, "user_ids": [u.id for u in users],
                  "prompts": setup.prompts, "images_per_prompt": n_, "steps": setup.steps,
                  "guidance": setup.guidance, "noise_seed": setup.noise_seed, "k": config.k,
                  "user_chunk_pairs": config.user_chunk_pairs,
                  "comparisons": u_ * p_ * n_, "scorer": config.scorer or None,
                  "scorer_user_encoder": scorer_spec if scorer is not None else None, "primary": primary},
        "adapters": adapters,
        "few_shot": {"adapter": primary, "points": few_shot},
        "interpolation": {"adapter": primary, "k": config.k, "pairing": config.interpolation_pairing, "curves": curves,
                          "summary": interpolation_summary(curves)},
        "training": train_logs,
        "checkpoint_curves": checkpoint_curves,
        "users": user_rows,
        "notes": notes,
        "timings": timings,
        "seconds": round(time.time() - t0, 1),
    }
    return report, {uid: np.stack(rows) for uid, rows in grids.items()}


def write_report(report: dict[str, Any], grids: dict[str, Any], out: str | Path, overwrite: bool = False) -> Path:
    """Write report.json, report.md, the figures and the image grids into folder ``out``.

    Everything goes to a temporary folder beside ``out`` first, which replaces ``out`` only when complete.
    """
    import json

    from pixpref.evaluation.markdown import render_markdown
    from pixpref.evaluation.plots import write_figures
    from pixpref.toyworld.render import make_grid

    out = check_output_path(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        report["figures"] = write_figures(report, tmp)
        report["grids"] = {}
        for uid, rows in grids.items():  # rows: (R, P*n, H, W, 3) -> one row per model
            name = f"grid_user{uid}.png"
            make_grid(rows.reshape(-1, *rows.shape[2:]), ncols=rows.shape[1], upscale=3).save(tmp / name)
            report["grids"][uid] = name
        (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        (tmp / "report.md").write_text(render_markdown(report))
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def evaluate(config: EvalConfig, out: str | Path | None = None, overwrite: bool = False,
             command: str | None = None, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Measure and return the report; with ``out`` (or ``config.out``) also write it into that folder."""
    from pixpref.config import to_dict

    if not isinstance(config, EvalConfig):
        raise PixprefError(f"evaluate() needs an EvalConfig, got {type(config).__name__}")
    out = out or config.out or None
    if out is not None:
        check_output_path(out, overwrite)  # refuse before the slow part
    report, grids = measure(config, log)
    report = {"command": command or "pixpref.evaluation.evaluate(config)", "config": to_dict(config), **report}
    if out is not None:
        write_report(report, grids, out, overwrite)
        log(f"wrote {out} (report.json, report.md, {len(report['figures']) + len(report['grids'])} PNGs) "
            f"in {report['seconds']:.0f}s")
    return report
