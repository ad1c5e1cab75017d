"""``report.md``: the evaluation report dict as Markdown tables (numbers with three decimals)."""

from __future__ import annotations

from typing import Any


def f3(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def ci(result: dict[str, Any]) -> str:
    low, high = result["ci95"]
    return f"[{low:.3f}, {high:.3f}]"


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _setup(report: dict[str, Any]) -> list[str]:
    s = report["setup"]
    lines = [
        "# Evaluation report", "",
        f"Command: `{report['command']}`  ", f"Date: {report['date']}  ",
        f"Wall time: {report['seconds']:.0f} s", "",
        f"Unseen users: {s['users']} (ids {', '.join(map(str, s['user_ids']))}) from `{s['data']}`; "
        f"base model `{s['base']}`; {len(s['prompts'])} prompts x {s['images_per_prompt']} images, "
        f"{s['steps']} steps, guidance {s['guidance']}; k = {s['k']} examples per user"
        + (f" (the VLM reads them {s['user_chunk_pairs']} pairs per prompt, chunks averaged)"
           if s.get("user_chunk_pairs") else "") + ". Each adapter is judged on "
        f"{s['comparisons']} comparisons (user x prompt x noise), its image against the base image from the "
        "same noise; ties count half; 95% Wilson intervals.", "",
        "Judges: the **oracle** (each synthetic user's exact utility of the oracle's pixel measurements) and "
        + (f"the **scorer** `{s['scorer']}` (its `personal` dimension reads `{s['scorer_user_encoder']['pooling']}` "
           "embeddings of the same k examples). Agreement: share of comparisons where oracle and scorer pick "
           "the same side." if s["scorer"] else "no scorer."), "",
        "Prompts: " + ", ".join(f"`{p}`" for p in s["prompts"]), "",
    ]
    return lines


def _headline(report: dict[str, Any]) -> list[str]:
    rows = []
    for name, r in report["adapters"].items():
        personal = r["scorer"].get("personal")
        agree = r["agreement"].get("personal")
        rows.append([name, f3(r["oracle"]["win_rate"]), ci(r["oracle"]),
                     f3(personal["win_rate"]) if personal else "-", ci(personal) if personal else "-",
                     f3(agree["rate"]) if agree else "-", f3(r["adherence"]["base"]),
                     f3(r["adherence"]["personal"]), f3(r["oracle"]["mean_delta"])])
    header = ["adapter", "oracle win rate", "95% CI", "scorer personal win rate", "95% CI", "agreement",
              "adherence base", "adherence personal", "mean utility gain"]
    lines = [f"## Personalized vs base (k = {report['setup']['k']})", "", *table(header, rows)]
    for name, r in report["adapters"].items():
        control = r.get("mismatched_users")
        if control:
            lines += [f"Control ({name}): each user judges images made from another user's embedding (user i gets "
                      f"user i + {control['shift']}'s): oracle win rate {f3(control['oracle']['win_rate'])} "
                      f"{ci(control['oracle'])}, adherence {f3(control['adherence']['personal'])}; personalization "
                      f"beyond a shared shift (matched - mismatched): {control['gap']:+.3f}.", ""]
    return lines


def _dimensions(report: dict[str, Any]) -> list[str]:
    rows = []
    for name, r in report["adapters"].items():
        for dim, res in r["scorer"].items():
            rows.append([name, dim, f3(res["win_rate"]), ci(res), f"{res['mean_delta']:+.3f}",
                         f3(r["agreement"][dim]["rate"])])
    if not rows:
        return []
    header = ["adapter", "dimension", "win rate", "95% CI", "mean score change", "agreement with oracle"]
    return ["## Scorer dimensions (quality change vs base)", "", *table(header, rows)]


def _few_shot(report: dict[str, Any]) -> list[str]:
    fs = report["few_shot"]
    if not fs["points"]:
        return []
    rows = []
    for p in fs["points"]:
        sp = p.get("scorer_personal")
        rows.append([p["k"], f3(p["oracle"]["win_rate"]), ci(p["oracle"]), f3(sp["win_rate"]) if sp else "-",
                     ci(sp) if sp else "-", f3(p["agreement_personal"]["rate"]) if sp else "-"])
    header = ["k", "oracle win rate", "95% CI", "scorer personal win rate", "95% CI", "agreement"]
    return [f"## Few-shot curve ({fs['adapter']})", "", *table(header, rows)]


def _pairing_line(pairing: str) -> str:
    if pairing == "opposed":
        return ("Pairs: the users whose utilities of the base model's images are most negatively correlated "
                "(interpolation_pairing: opposed).")
    return "Pairs: users 0-1, 2-3, ... in order (interpolation_pairing: index)."


def _interpolation(report: dict[str, Any]) -> list[str]:
    interp = report["interpolation"]
    if not interp["curves"]:
        return []
    lines = [f"## Interpolation ({interp['adapter']}, k = {interp['k']})", "",
             "Embedding (1 - alpha) * user a + alpha * user b; mean oracle utility of the images for each user.",
             _pairing_line(interp.get("pairing", "index")), ""]
    summ = interp.get("summary") or {}
    if summ.get("users"):
        lines += [f"Over {summ['users']} users ({len(interp['curves'])} curves): monotone (own utility never moves "
                  f"the wrong way) {summ['monotone']:.2f}; right direction end to end {summ['right_direction']:.2f}; "
                  f"mean change {summ['mean_change']:+.3f} (user a's fall, user b's rise)"
                  + (f"; no step significantly the wrong way (beyond 1.96 paired standard errors) "
                     f"{summ['monotone_within_noise']:.2f}" if "monotone_within_noise" in summ else "") + ".", ""]
    for c in interp["curves"]:
        rows = [[f"{a:.2f}", f3(ua), f3(ub)] for a, ua, ub in zip(c["alpha"], c["utility_a"], c["utility_b"],
                                                                   strict=True)]
        base = (f" (base model's images: {f3(c['base_utility_a'])} and {f3(c['base_utility_b'])})"
                if "base_utility_a" in c else "")
        corr = f"; taste correlation {c['taste_correlation']:+.2f}" if "taste_correlation" in c else ""
        lines += [f"User {c['user_a']} -> user {c['user_b']}{base}{corr}:", "",
                  *table(["alpha", f"utility of user {c['user_a']}", f"utility of user {c['user_b']}"], rows)]
    return lines


def _training(report: dict[str, Any]) -> list[str]:
    if not report["training"]:
        return []
    rows = []
    for name, log in report["training"].items():
        s = log["summary"]
        rows.append([name, f"`{log['path']}`", s["last_step"], f"{s.get('wall_seconds', 0):.0f}",
                     f"{s['steps_per_second']:.2f}" if s.get("steps_per_second") else "-",
                     f3(s.get("final_loss")), f3(s.get("final_implicit_acc"))])
    header = ["run", "log", "steps", "wall s", "steps/s", "final loss", "final implicit acc"]
    return ["## Training (from logs)", "", "Final values are means over the last 5 logged steps. Different "
            "losses (DPO, InPO) are not on one scale; implicit accuracy (share of pairs whose implicit reward "
            "ranks the chosen image first) is comparable.", "",
            *table(header, rows)]


def _checkpoints(report: dict[str, Any]) -> list[str]:
    cc = report.get("checkpoint_curves")
    if not cc:
        return []
    lines = ["## Win rate vs training step (kept checkpoints)", "",
             f"Oracle win rate over base of every kept checkpoint, on the first {cc['users']} unseen users "
             f"({cc['comparisons']} comparisons per checkpoint); wall-clock from each run's train_log.jsonl.", ""]
    rows = []
    for name, curve in cc["curves"].items():
        walls = curve["wall"] or [None] * len(curve["step"])
        for step, rate, interval, wall in zip(curve["step"], curve["win_rate"], curve["ci95"], walls):
            rows.append([name, step, "-" if wall is None else f"{wall:.0f}", f3(rate),
                         f"[{interval[0]:.3f}, {interval[1]:.3f}]"])
    lines += table(["run", "step", "wall s", "win rate", "95% CI"], rows)
    t = cc["target"]
    rows = [[name, r["steps"] if r["steps"] is not None else f"not reached by step {r['last_step']}",
             "-" if r["wall_seconds"] is None else f"{r['wall_seconds']:.0f}", f3(r["best_win_rate"])]
            for name, r in t["runs"].items()]
    lines += [f"Steps to reach win rate {t['target']:.2f} (the first checkpoint at or above it):", "",
              *table(["run", "steps", "wall s", "best win rate"], rows)]
    for pair, ratio in t["ratios"].items():
        lines.append(f"Ratio {pair}: steps {f3(ratio['steps'])}, wall-clock {f3(ratio['wall'])}  ")
    return lines + [""]


def _users(report: dict[str, Any]) -> list[str]:
    names = list(report["adapters"])
    has_scorer = any("scorer_personal_win_rate" in u for u in report["users"])
    header = ["user", "archetype", *(f"oracle ({n})" for n in names)]
    header += [f"scorer personal ({n})" for n in names] if has_scorer else []
    header.append("taste")
    rows = []
    for u in report["users"]:
        row = [u["id"], u["archetype"] or "-", *(f3(u["oracle_win_rate"][n]) for n in names)]
        if has_scorer:
            row += [f3(u["scorer_personal_win_rate"].get(n)) for n in names]
        row.append(u["description"].split(": ", 1)[-1])
        rows.append(row)
    return ["## Per user (win rate over base)", "", *table(header, rows)]


def _figures(report: dict[str, Any]) -> list[str]:
    lines = []
    if report.get("figures"):
        lines += ["## Figures", ""] + [f"![{name}]({file})" for name, file in report["figures"].items()] + [""]
    if report.get("grids"):
        rows = ", ".join(["base", *report["adapters"]])
        lines += ["## Image grids", "", f"One row per model ({rows}); columns are prompt x noise, the same noises "
                  "in every row.", ""]
        lines += [f"User {uid}: ![user {uid}]({file})  " for uid, file in report["grids"].items()] + [""]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report.md."""
    lines = [*_setup(report), *_headline(report), *_dimensions(report), *_few_shot(report),
             *_interpolation(report), *_training(report), *_checkpoints(report), *_users(report), *_figures(report)]
    if report["notes"]:
        lines += ["## Notes", "", *(f"- {n}" for n in report["notes"]), ""]
    return "\n".join(lines)
