"""The Gradio personalization demo (UI wiring only; the models live in :mod:`pixpref.demo.engine`).

    from pixpref.demo.app import create_demo
    create_demo(DemoEngine(DemoConfig())).queue().launch()

Three tabs: *1. Your taste* (pick between base-model images for a few rounds, or upload your own pairs),
*2. Your images* (personalized vs base images for the same seeds, with the scorer's per-dimension scores),
*3. Profiles* (download / load profiles, interpolate between two). Named API endpoints (``api_name``) let
``gradio_client`` drive the same flow: ``new_pair``, ``choose``, ``undo``, ``make_profile``, ``generate``,
``load_profile``, ``interpolate``, ``add_upload``.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from pixpref.demo.engine import Choice, DemoEngine, GenerationResult, Profile
from pixpref.errors import PixprefError

log = logging.getLogger("pixpref.demo")
DIMENSION_ORDER = ("aesthetics", "alignment", "detail", "overall", "personal")


def _user_error(fn):
    """Turn library errors into in-page messages; never show a stack trace in the page."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (PixprefError, FileNotFoundError) as e:
            raise gr.Error(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        except Exception:
            log.exception("demo request failed")
            raise gr.Error("something went wrong on the server; the details are in its log") from None

    return wrapper


def create_demo(engine: DemoEngine, workdir: str | Path | None = None) -> gr.Blocks:
    """Build the Blocks app around ``engine``. Downloads are written under ``workdir`` (a temp folder)."""
    cfg = engine.config
    workdir = Path(workdir or tempfile.mkdtemp(prefix="pixpref-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    size = cfg.display_size

    shown = workdir / "shown"
    shown.mkdir(exist_ok=True)

    def show(img: np.ndarray) -> str:
        """Upscale for the page and write a uniquely named PNG. (Returning PIL images let gradio cache
        identical images of two sessions under one path, and one session could read the file while the
        other was rewriting it: a truncated download under load.)"""
        path = shown / f"{uuid.uuid4().hex}.png"
        Image.fromarray(img).resize((size, size), Image.NEAREST).save(path)
        return str(path)

    def history_items(choices: list[Choice]) -> list[tuple[str, str]]:
        items = []
        for i, c in enumerate(choices):
            for side, img in (("a", c.a), ("b", c.b)):
                mark = "preferred" if c.pick == side else ("no preference" if c.pick == "none" else "not chosen")
                items.append((show(img), f"{i + 1}{side.upper()}: {c.prompt} ({mark})"))
        return items

    def status(choices: list[Choice]) -> str:
        done = len(choices)
        if done >= cfg.rounds:
            return f"{done} choices made: press **Make my profile** (or keep choosing)."
        return f"Round {done + 1} of {cfg.rounds}: which image do you prefer?"

    # ----- tab 1: taste ------------------------------------------------------------------------------

    @_user_error
    def new_pair(prompt: str, choices: list[Choice]):
        prompt = engine.check_prompt(prompt)
        a, b = engine.taste_pair(prompt, len(choices))
        return show(a), show(b), {"prompt": prompt, "a": a, "b": b}, status(choices)

    @_user_error
    def choose(pick: str, current: dict | None, choices: list[Choice]):
        if not current:
            raise PixprefError("show a pair first (press 'Show two images')")
        choices = choices + [Choice(current["prompt"], current["a"], current["b"], pick)]
        prompt = engine.suggest_prompt(len(choices))
        a, b = engine.taste_pair(prompt, len(choices))
        return (choices, history_items(choices), prompt, show(a), show(b), {"prompt": prompt, "a": a, "b": b},
                status(choices))

    @_user_error
    def undo(choices: list[Choice]):
        if not choices:
            raise PixprefError("nothing to undo")
        choices = choices[:-1]
        return choices, history_items(choices), status(choices)

    @_user_error
    def add_upload(prompt: str, chosen: str | None, rejected: str | None, choices: list[Choice]):
        if not chosen or not rejected:
            raise PixprefError("upload two images: the one you prefer and the other one")
        from pixpref.data.images import load_rgb

        for f in (chosen, rejected):
            if Path(f).stat().st_size > cfg.max_upload_mb * 2**20:
                raise PixprefError(f"an uploaded file is larger than {cfg.max_upload_mb:g} MB")
        kw = {"max_pixels": cfg.max_upload_pixels}
        a = load_rgb(chosen, where="preferred upload", **kw)
        b = load_rgb(rejected, where="other upload", **kw)
        choices = choices + [Choice(engine.check_prompt(prompt), a, b, "a")]
        return choices, history_items(choices), status(choices)

    @_user_error
    def make_profile(name: str, choices: list[Choice], profiles: dict[str, Profile]):
        name = (name or "").strip() or f"profile {len(profiles) + 1}"
        profile = engine.build_profile(choices, name=name)
        profiles = {**profiles, name: profile}
        path = engine.save_profile(profile, workdir / f"{_safe_name(name)}.safetensors")
        names = list(profiles)
        msg = f"Profile **{name}** made from {len(profile.pairs)} pairs. Go to *2. Your images*."
        return (profiles, msg, str(path), gr.update(choices=names, value=name), gr.update(choices=names),
                gr.update(choices=names))

    # ----- tab 2: images -----------------------------------------------------------------------------

    @_user_error
    def generate(prompt: str, profile_name: str | None, scale: float, seed: float, profiles: dict[str, Profile],
                 progress=gr.Progress()):  # noqa: B008  (gradio injects progress through this default)
        if profile_name and profile_name not in profiles:
            raise PixprefError(f"no profile named {profile_name!r}; valid: {', '.join(profiles) or 'none yet'}")
        profile = profiles.get(profile_name) if profile_name else None
        progress(0.1, desc="sampling base and personalized images")
        result = engine.generate(prompt, profile, user_scale=float(scale), seed=int(seed))
        progress(0.9, desc="scoring")
        raw = {"prompt": result.prompt, "seed": result.seed, "user_scale": result.user_scale,
               "base": result.scores_base, "personalized": result.scores_personal}
        return (_gallery(result.base, result.scores_base, show), _gallery(result.personal, result.scores_personal, show),
                _score_table(result), _summary(result), raw)

    # ----- tab 3: profiles ---------------------------------------------------------------------------

    @_user_error
    def load_profile(file: str | None, profiles: dict[str, Profile]):
        if not file:
            raise PixprefError("choose a profile file (.safetensors) to load")
        if Path(file).stat().st_size > cfg.max_upload_mb * 2**20:
            raise PixprefError(f"the profile file is larger than {cfg.max_upload_mb:g} MB")
        profile = engine.load_profile(file)
        name = profile.name if profile.name not in profiles else f"{profile.name} ({len(profiles) + 1})"
        profiles = {**profiles, name: profile}
        names = list(profiles)
        return (profiles, f"Loaded profile **{name}**.", gr.update(choices=names, value=name),
                gr.update(choices=names), gr.update(choices=names))

    @_user_error
    def interpolate(a: str | None, b: str | None, alpha: float, profiles: dict[str, Profile]):
        if not a or not b or a not in profiles or b not in profiles:
            raise PixprefError("choose two existing profiles to interpolate between")
        mixed = engine.interpolate(profiles[a], profiles[b], float(alpha))
        profiles = {**profiles, mixed.name: mixed}
        names = list(profiles)
        return (profiles, f"Made **{mixed.name}**.", gr.update(choices=names, value=mixed.name),
                gr.update(choices=names), gr.update(choices=names))

    # ----- layout ------------------------------------------------------------------------------------

    # files the app wrote (shown images, profiles) and gradio's copies are deleted after an hour
    with gr.Blocks(title="pixpref: personalized text-to-image", delete_cache=(600, 3600)) as demo:
        choices = gr.State([])
        current = gr.State(None)
        profiles = gr.State({})
        gr.Markdown("# pixpref\nTell the model your taste with a few choices, then compare personalized "
                    f"images with the base model's. Model: `{cfg.base}`, adapter: `{cfg.adapter}`.")
        with gr.Tab("1. Your taste"):
            with gr.Row():
                taste_prompt = gr.Textbox(value=engine.suggest_prompt(0), label="Prompt", scale=4)
                show_btn = gr.Button("Show two images", variant="primary", scale=1)
            with gr.Row():
                img_a = gr.Image(label="A", type="filepath", interactive=False, height=size, width=size, elem_id="pair-a")
                img_b = gr.Image(label="B", type="filepath", interactive=False, height=size, width=size, elem_id="pair-b")
            with gr.Row():
                pick_a = gr.Button("I prefer A")
                pick_none = gr.Button("No preference")
                pick_b = gr.Button("I prefer B")
                undo_btn = gr.Button("Undo last choice")
            round_md = gr.Markdown(status([]))
            history = gr.Gallery(label="Your choices", columns=8, height="auto")
            with gr.Accordion("Upload your own pair instead", open=False):
                up_prompt = gr.Textbox(label="Prompt of the pair")
                with gr.Row():
                    # File, not Image: pixpref decodes the upload itself and says what is wrong with a bad one
                    up_chosen = gr.File(label="Preferred image", file_types=["image"], type="filepath")
                    up_rejected = gr.File(label="Other image", file_types=["image"], type="filepath")
                up_btn = gr.Button("Add this pair")
            with gr.Row():
                profile_name = gr.Textbox(label="Profile name", placeholder="e.g. me", scale=3)
                profile_btn = gr.Button("Make my profile", variant="primary", scale=1)
            profile_md = gr.Markdown()
            profile_file = gr.File(label="Download profile", interactive=False)
        with gr.Tab("2. Your images"):
            with gr.Row():
                gen_prompt = gr.Textbox(value=engine.suggest_prompt(1), label="Prompt", scale=3)
                gen_profile = gr.Dropdown(choices=[], label="Profile", scale=2, allow_custom_value=True)
            with gr.Row():
                scale = gr.Slider(0.0, 2.0, value=engine.default_user_scale, step=0.1, label="Personalization strength (user_scale)")
                seed = gr.Number(value=cfg.seed, precision=0, label="Seed")
                gen_btn = gr.Button("Generate", variant="primary")
            with gr.Row():
                base_gallery = gr.Gallery(label="Base model", columns=cfg.num_images, height="auto")
                personal_gallery = gr.Gallery(label="Personalized", columns=cfg.num_images, height="auto")
            score_plot = gr.BarPlot(x="dimension", y="score", color="images", title="Mean score per dimension",
                                    height=260, sort=None)
            score_md = gr.Markdown()
            with gr.Accordion("All scores (JSON)", open=False):
                score_json = gr.JSON()
        with gr.Tab("3. Profiles"):
            load_file = gr.File(label="Load a profile (.safetensors)", file_types=[".safetensors"], type="filepath")
            load_md = gr.Markdown()
            with gr.Row():
                mix_a = gr.Dropdown(choices=[], label="Profile A", allow_custom_value=True)
                mix_b = gr.Dropdown(choices=[], label="Profile B", allow_custom_value=True)
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="A -> B")
                mix_btn = gr.Button("Interpolate")
            mix_md = gr.Markdown()

        pair_out = [img_a, img_b, current, round_md]
        show_btn.click(new_pair, [taste_prompt, choices], pair_out, api_name="new_pair")
        choose_out = [choices, history, taste_prompt, img_a, img_b, current, round_md]
        for btn, pick in ((pick_a, "a"), (pick_b, "b"), (pick_none, "none")):
            btn.click(choose, [gr.State(pick), current, choices], choose_out, api_name=f"choose_{pick}")
        undo_btn.click(undo, [choices], [choices, history, round_md], api_name="undo")
        up_btn.click(add_upload, [up_prompt, up_chosen, up_rejected, choices], [choices, history, round_md],
                     api_name="add_upload")
        profile_lists = [gen_profile, mix_a, mix_b]
        profile_btn.click(make_profile, [profile_name, choices, profiles],
                          [profiles, profile_md, profile_file, *profile_lists], api_name="make_profile")
        gen_btn.click(generate, [gen_prompt, gen_profile, scale, seed, profiles],
                      [base_gallery, personal_gallery, score_plot, score_md, score_json], api_name="generate")
        load_file.upload(load_profile, [load_file, profiles], [profiles, load_md, *profile_lists],
                         api_name="load_profile")
        mix_btn.click(interpolate, [mix_a, mix_b, alpha, profiles], [profiles, mix_md, *profile_lists],
                      api_name="interpolate")
    return demo


def _safe_name(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    return keep[:60] or "profile"


def _gallery(images: np.ndarray | None, scores: dict[str, list[float]], show) -> list[tuple[str, str]]:
    if images is None:
        return []
    dims = [d for d in DIMENSION_ORDER if d in scores]
    return [(show(img), " ".join(f"{d[:5]} {scores[d][i]:+.2f}" for d in dims)) for i, img in enumerate(images)]


def _score_table(result: GenerationResult) -> Any:
    import pandas as pd

    rows = []
    for label, scores in (("base", result.scores_base), ("personalized", result.scores_personal)):
        for d in DIMENSION_ORDER:
            if d in scores:
                # one bar per (dimension, images): side by side, not stacked
                rows.append({"dimension": f"{d} / {label[:4]}", "score": float(np.mean(scores[d])), "images": label})
    return pd.DataFrame(rows)


def _summary(result: GenerationResult) -> str:
    if result.personal is None:
        return "Base images only: make or choose a profile to see personalized ones."
    lines = ["| dimension | base (mean) | personalized (mean) |", "|---|---|---|"]
    for d in DIMENSION_ORDER:
        if d in result.scores_personal:
            lines.append(f"| {d} | {np.mean(result.scores_base.get(d, [np.nan])):+.3f} | "
                         f"{np.mean(result.scores_personal[d]):+.3f} |")
    return "\n".join(lines)
