"""Figures of an evaluation report (matplotlib, Agg backend), drawn from the report dict alone.

    files = write_figures(report, folder)     # {"few_shot": "few_shot.png", ...}; figures without data are skipped
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path, title: str | None = None) -> bool:
    """Title (if any), tight layout, write the PNG, free the figure."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def _errors(results: list[dict]) -> list[list[float]]:
    """[[below...], [above...]] distances from each win rate to its 95% CI bounds (for errorbar)."""
    return [[r["win_rate"] - r["ci95"][0] for r in results], [r["ci95"][1] - r["win_rate"] for r in results]]


def plot_few_shot(report: dict[str, Any], path: Path) -> bool:
    """Win rate over base vs k examples, oracle and scorer judges, with 95% CIs."""
    points = report["few_shot"]["points"]
    if not points:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ks = [p["k"] for p in points]
    series = [("oracle", [p["oracle"] for p in points])]
    if all("scorer_personal" in p for p in points):
        series.append(("scorer (personal)", [p["scorer_personal"] for p in points]))
    for i, (label, results) in enumerate(series):
        xs = [k * (1 + 0.04 * (i - 0.5)) for k in ks]  # nudge apart so the error bars do not overlap
        ax.errorbar(xs, [r["win_rate"] for r in results], yerr=_errors(results), marker="o", capsize=4,
                    label=label)
    ax.axhline(0.5, color="grey", lw=1, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("examples per user (k)")
    ax.set_ylabel("win rate over base (95% CI)")
    ax.set_title(f"Few-shot curve ({report['few_shot']['adapter']}, {report['setup']['users']} unseen users)")
    ax.legend()
    return _save(plt, fig, path)


def plot_interpolation(report: dict[str, Any], path: Path) -> bool:
    """Each user's mean utility along the interpolation from user a's embedding to user b's."""
    curves = report["interpolation"]["curves"]
    if not curves:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.8), squeeze=False)
    for ax, c in zip(axes[0], curves, strict=True):
        ax.plot(c["alpha"], c["utility_a"], marker="o", color="C0", label=f"utility of user {c['user_a']}")
        ax.plot(c["alpha"], c["utility_b"], marker="s", color="C1", label=f"utility of user {c['user_b']}")
        if "base_utility_a" in c:  # the same users' utility of the base model's images
            ax.axhline(c["base_utility_a"], color="C0", ls="--", lw=1, label=f"base, user {c['user_a']}")
            ax.axhline(c["base_utility_b"], color="C1", ls="--", lw=1, label=f"base, user {c['user_b']}")
        ax.set_xlabel(f"alpha (0 = user {c['user_a']}, 1 = user {c['user_b']})")
        ax.set_ylabel("mean oracle utility")
        ax.set_title(f"user {c['user_a']} -> user {c['user_b']}")
        ax.legend(fontsize=8)
    return _save(plt, fig, path, f"Interpolating user embeddings ({report['interpolation']['adapter']})")


SMOOTH = 5  # log lines in the running mean of the training curves


def _running_mean(values: list[float], window: int = SMOOTH) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    return [sum(values[max(0, i + 1 - window): i + 1]) / len(values[max(0, i + 1 - window): i + 1])
            for i in range(len(values))]


def plot_training(report: dict[str, Any], path: Path) -> bool:
    """Loss and implicit accuracy of each training log (raw and running mean), against step and wall-clock."""
    logs = report["training"]
    if not logs:
        return False
    plt = _pyplot()
    metrics = [m for m in ("loss", "implicit_acc") if any(m in v["curves"] for v in logs.values())]
    axes_x = [x for x in ("step", "wall") if x == "step" or all("wall" in v["curves"] for v in logs.values())]
    if not metrics:
        return False
    fig, axes = plt.subplots(len(metrics), len(axes_x), figsize=(5 * len(axes_x), 3.3 * len(metrics)),
                             squeeze=False)
    for r, metric in enumerate(metrics):
        for c, x in enumerate(axes_x):
            ax = axes[r][c]
            for i, (name, log) in enumerate(logs.items()):
                if metric in log["curves"]:
                    xs, ys = log["curves"][x], log["curves"][metric]
                    colour = f"C{i}"
                    ax.plot(xs, ys, color=colour, alpha=0.3, lw=1)
                    ax.plot(xs, _running_mean(ys), color=colour, lw=2, label=f"{name} (mean of {SMOOTH})")
            ax.set_xlabel("step" if x == "step" else "wall-clock seconds")
            ax.set_ylabel(metric)
            if metric == "implicit_acc":
                ax.axhline(0.5, color="grey", lw=1, ls="--")
            ax.legend(fontsize=8)
    return _save(plt, fig, path, "Training curves")


def plot_checkpoints(report: dict[str, Any], path: Path) -> bool:
    """Oracle win rate of each kept checkpoint against step and wall-clock, with 95% CIs and the target."""
    cc = report.get("checkpoint_curves")
    if not cc or not cc["curves"]:
        return False
    plt = _pyplot()
    axes_x = ["step"] + (["wall"] if all(c["wall"] for c in cc["curves"].values()) else [])
    fig, axes = plt.subplots(1, len(axes_x), figsize=(5.5 * len(axes_x), 4), squeeze=False)
    for c, x in enumerate(axes_x):
        ax = axes[0][c]
        for name, curve in cc["curves"].items():
            results = [{"win_rate": w, "ci95": ci} for w, ci in zip(curve["win_rate"], curve["ci95"])]
            ax.errorbar(curve[x], curve["win_rate"], yerr=_errors(results), marker="o", capsize=3, label=name)
        ax.axhline(cc["target"]["target"], color="C3", lw=1, ls=":", label=f"target {cc['target']['target']:.2f}")
        ax.axhline(0.5, color="grey", lw=1, ls="--")
        ax.set_xlabel("training step" if x == "step" else "training wall-clock seconds")
        ax.set_ylabel("oracle win rate over base (95% CI)")
        ax.legend(fontsize=8)
    title = f"Win rate of kept checkpoints ({cc['users']} unseen users, {cc['comparisons']} comparisons each)"
    return _save(plt, fig, path, title)


def plot_dimensions(report: dict[str, Any], path: Path) -> bool:
    """Per adapter: win rate over base on each judge (oracle, scorer dimensions) and mean score change."""
    import numpy as np

    adapters = report["adapters"]
    if not adapters:
        return False
    dims = list(next(iter(adapters.values()))["scorer"])
    plt = _pyplot()
    ncols = 2 if dims else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
    judges = ["oracle", *dims]
    width = 0.8 / len(adapters)
    for i, (name, res) in enumerate(adapters.items()):
        results = [res["oracle"], *(res["scorer"][d] for d in dims)]
        xs = np.arange(len(judges)) + (i - (len(adapters) - 1) / 2) * width
        axes[0][0].bar(xs, [r["win_rate"] for r in results], width, yerr=_errors(results), capsize=3, label=name)
        if dims:
            deltas = [res["scorer"][d] for d in dims]
            xs = np.arange(len(dims)) + (i - (len(adapters) - 1) / 2) * width
            axes[0][1].bar(xs, [d["mean_delta"] for d in deltas], width,
                           yerr=[1.96 * d["se_delta"] for d in deltas], capsize=3, label=name)
    ax = axes[0][0]
    ax.axhline(0.5, color="grey", lw=1, ls="--")
    ax.set_xticks(range(len(judges)), judges, rotation=20)
    ax.set_ylabel("win rate over base (95% CI)")
    ax.set_ylim(0, 1)
    ax.set_title("Personalized vs base, per judge")
    ax.legend()
    if dims:
        ax = axes[0][1]
        ax.axhline(0, color="grey", lw=1)
        ax.set_xticks(range(len(dims)), dims, rotation=20)
        ax.set_ylabel("mean score change vs base (95% CI)")
        ax.set_title("Scorer: per-dimension change")
        ax.legend()
    return _save(plt, fig, path)


FIGURES = {"few_shot": plot_few_shot, "interpolation": plot_interpolation, "training": plot_training,
           "checkpoints": plot_checkpoints, "dimensions": plot_dimensions}


def write_figures(report: dict[str, Any], folder: str | Path) -> dict[str, str]:
    """Draw every figure that has data into ``folder`` -> {figure: file name}."""
    files = {}
    for name, plot in FIGURES.items():
        path = Path(folder) / f"{name}.png"
        if plot(report, path):
            files[name] = path.name
    return files
