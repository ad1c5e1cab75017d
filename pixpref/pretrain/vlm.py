"""Pretrain the toy VLM (a small LLaVA) on the toy world so its hidden states carry image style.

    HF_HUB_OFFLINE=1 pixpref pretrain toy --only vlm --out runs/pretrain  [--set vlm.steps=100]

Three teacher-forced tasks, loss on the answer tokens only:

1. caption: ``<image> Describe the image.`` -> :func:`pixpref.toyworld.scene.caption` (content + style);
2. compare: ``<image><image> Compare the first image with the second.`` -> :func:`compare_text`;
3. pairs: a PPD-like interleaved prompt with 1-4 (prompt, preferred, dispreferred) pairs, then
   ``Describe the preferred image of pair 2.`` -> that image's caption (trains reading 8 images at once).

An auxiliary linear probe reads every caption attribute (and the continuous size, position and
background lightness) from each image's projected tokens; without it the LM took hundreds of steps to
start using the image at all (caption loss stuck near the image-blind ~0.5 nats/token). The probe is
dropped after training: the saved model is a plain LLaVA. Held-out shape-colour combinations are never
shown. Writes ``out_dir/vlm`` (fp16 safetensors, processor,
``train_log.csv``, ``metrics.json``).
"""

from __future__ import annotations

import csv
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixpref.errors import PixprefError
from pixpref.models.vlm import IMAGE_TOKEN, ToyVLMSpec
from pixpref.pretrain.schedule import warmup_cosine
from pixpref.toyworld.scene import (
    COLOURS,
    PROMPT_TEMPLATES,
    SHAPES,
    Scene,
    caption,
    sample_scene,
    style_words,
)

CAPTION_QUESTION = "Describe the image."
COMPARE_QUESTION = "Compare the first image with the second."
PAIRS_INTRO = "You will be shown a few examples of preferred and dispreferred images."


@dataclass
class PretrainConfig:
    """Toy VLM pretraining settings (configs/toy/pretrain_vlm.yaml)."""

    seed: int = 0  # seeds data, init and batching
    model: ToyVLMSpec = field(default_factory=ToyVLMSpec)
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.05  # cosine decay floor, as a fraction of lr
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    train_scenes: int = 20000  # pre-rendered pool of training scenes (seen combos only)
    tokenizer_texts: int = 4000  # texts used to train the BPE
    caption_weight: float = 0.6  # task mixture (normalised)
    compare_weight: float = 0.25
    pairs_weight: float = 0.15
    max_pairs: int = 4  # pairs in the interleaved task (4 pairs = 8 images, as in PPD)
    eval_scenes: int = 200  # held-out scenes for the final caption accuracy
    eval_seed: int = 12345
    log_every: int = 10
    threads: int = 0  # torch threads; 0 keeps the default
    init_from: str | None = None  # continue from a saved toy VLM folder (its tokenizer and processor kept)
    probe_weight: float = 1.0  # auxiliary attribute probe on the projected image tokens (0 = off; not saved)
    # vision warm-up: before the LM tasks, train the vision tower alone with the attribute probe on its
    # patch tokens (fast: no LM). Shape is learned here; the LM tasks alone left it near chance (0.35).
    vision_steps: int = 0
    vision_batch_size: int = 64
    vision_lr: float = 1e-3
    freeze_vision: bool = False  # keep the vision tower fixed during the LM tasks (after the warm-up)
    vision_attribute_weights: dict[str, float] = field(default_factory=dict)  # warm-up probe weight per
    # caption attribute (default 1; e.g. {shape: 5}: shape is the attribute the tower learns last)
    # share of caption answers (caption and pairs tasks) whose colour word is replaced by another colour and
    # gets no loss: the shape word after it must then be read from the image, not guessed from the colour
    # (on seen combinations the colour predicts the shape, which the LM learns instead of looking)
    caption_colour_swap: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise PixprefError("steps and batch_size must be >= 1")
        if self.vision_steps < 0 or self.vision_batch_size < 1:
            raise PixprefError("vision_steps must be >= 0 and vision_batch_size >= 1")
        unknown = sorted(set(self.vision_attribute_weights) - set(PROBE_CLASSES))
        if unknown:
            raise PixprefError(f"vision_attribute_weights: unknown attribute(s) {unknown}; valid: {list(PROBE_CLASSES)}")
        if any(not w >= 0 for w in self.vision_attribute_weights.values()):
            raise PixprefError("vision_attribute_weights must be >= 0")
        if not 0.0 <= self.caption_colour_swap <= 1.0:
            raise PixprefError(f"caption_colour_swap must be in [0, 1], got {self.caption_colour_swap}")
        if not 1 <= self.max_pairs <= 8:
            raise PixprefError(f"max_pairs must be in 1..8, got {self.max_pairs}")
        if min(self.caption_weight, self.compare_weight, self.pairs_weight) < 0 or self.caption_weight <= 0:
            raise PixprefError("task weights must be >= 0 and caption_weight > 0")
        worst = self.max_pairs * 2 * self.model.image_tokens + 40 * self.max_pairs + 80
        if worst > self.model.max_positions:
            raise PixprefError(
                f"model.max_positions {self.model.max_positions} is too small for {self.max_pairs} pairs "
                f"(needs about {worst})"
            )


# ---- texts ---------------------------------------------------------------------------------------------


def compare_text(a: Scene, b: Scene) -> str:
    """How scene ``a`` differs from ``b`` in style, e.g. 'the first is larger, on a darker background,
    pastel not vivid, same texture, outlined not plain, further left and higher'."""
    parts = []
    d = a.size - b.size
    parts.append("the same size" if abs(d) < 0.03 else ("larger" if d > 0 else "smaller"))
    d = a.bg_lightness - b.bg_lightness
    parts.append(
        "on the same background" if abs(d) < 0.12 else f"on a {'lighter' if d > 0 else 'darker'} background"
    )
    parts.append("same shade" if a.shade == b.shade else f"{a.shade} not {b.shade}")
    parts.append("same texture" if a.texture == b.texture else f"{a.texture} not {b.texture}")
    oa, ob = style_words(a)["outline"], style_words(b)["outline"]
    parts.append("same outline" if oa == ob else f"{oa} not {ob}")
    moves = []
    if abs(a.cx - b.cx) >= 0.08:
        moves.append("further left" if a.cx < b.cx else "further right")
    if abs(a.cy - b.cy) >= 0.08:
        moves.append("higher" if a.cy < b.cy else "lower")
    parts.append(" and ".join(moves) if moves else "in the same place")
    return "the first is " + ", ".join(parts)


_CAPTION_RE = re.compile(
    r"^a (?P<size>\w+) (?P<shade>\w+) (?P<colour>\w+) (?P<shape>\w+), (?P<texture>\w+), (?P<outline>\w+), "
    r"at the (?P<vertical>\w+) (?P<horizontal>\w+), on a (?P<background>\w+) background"
)
_TEXTURE_WORD = {"solid": "solid", "striped": "stripes", "dotted": "dots"}
ATTRIBUTES = ("colour", "shape", "size", "shade", "texture", "outline", "horizontal", "vertical", "background")
CONTENT_ATTRIBUTES = ("colour", "shape")


def parse_caption(text: str) -> dict[str, str] | None:
    """Invert :func:`caption`: attribute -> word (textures as scene values), or None if malformed."""
    m = _CAPTION_RE.match(text.strip())
    if not m:
        return None
    out = m.groupdict()
    out["texture"] = _TEXTURE_WORD.get(out["texture"], out["texture"])
    return out


def true_attributes(scene: Scene) -> dict[str, str]:
    """The attribute words a correct caption of ``scene`` contains (same keys as :func:`parse_caption`)."""
    out = dict(style_words(scene))
    out["texture"] = scene.texture
    out.update(colour=scene.colour, shape=scene.shape)
    return out


def tokenizer_corpus(rng: np.random.Generator, n: int) -> list[str]:
    """Texts the BPE is trained on: every prompt word of the toy world plus sampled answers."""
    texts = [CAPTION_QUESTION, COMPARE_QUESTION, PAIRS_INTRO, "USER: ASSISTANT:"]
    texts += [t.format(colour=c, shape=s) for t in PROMPT_TEMPLATES for c in COLOURS for s in SHAPES]
    texts += [f"Pair {i}: Preferred: Dispreferred: Describe the preferred image of pair {i}." for i in range(1, 9)]
    texts += ["Describe the dispreferred image of pair 1."]
    for _ in range(n):
        a, b = sample_scene(rng, combos="all"), sample_scene(rng, combos="all")
        texts += [caption(a), compare_text(a, b)]
    return texts


# ---- batches -------------------------------------------------------------------------------------------


def _user(items: list[Any]) -> list[dict]:
    content = [{"type": "image"} if it is None else {"type": "text", "text": it} for it in items]
    return [{"role": "user", "content": content}]


def make_example(task: str, idx: np.ndarray, scenes: list[Scene], rng: np.random.Generator) -> tuple:
    """(messages, image indices, answer) for one example using pool indices ``idx``."""
    if task == "caption":
        return _user([None, " " + CAPTION_QUESTION]), [int(idx[0])], caption(scenes[idx[0]])
    if task == "compare":
        a, b = int(idx[0]), int(idx[1])
        return _user([None, None, " " + COMPARE_QUESTION]), [a, b], compare_text(scenes[a], scenes[b])
    k = len(idx) // 2
    items: list[Any] = [PAIRS_INTRO]
    for i in range(k):
        preferred = scenes[int(idx[2 * i])]
        items += [f" Pair {i + 1}: {preferred.prompt(int(rng.integers(len(PROMPT_TEMPLATES))))}. Preferred: ",
                  None, " Dispreferred: ", None]
    j = int(rng.integers(k))
    which = int(rng.integers(2))
    items.append(f" Describe the {('preferred', 'dispreferred')[which]} image of pair {j + 1}.")
    return _user(items), [int(i) for i in idx[: 2 * k]], caption(scenes[idx[2 * j + which]])


def encode_example(processor: Any, messages: list[dict], answer: str | None) -> tuple[list[int], int]:
    """Token ids of prompt (+ answer and eos) with ``<image>`` expanded as LlavaProcessor does;
    returns (ids, number of prompt tokens)."""
    from pixpref.models.vlm import image_token_count

    tok = processor.tokenizer
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    prompt = prompt.replace(IMAGE_TOKEN, IMAGE_TOKEN * image_token_count(processor))
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    n_prompt = len(ids)
    if answer is not None:
        ids = ids + tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return ids, n_prompt


def encode_with_swapped_word(processor: Any, messages: list[dict], answer: str, word: str,
                             replacement: str) -> tuple[list[int], int, list[int]]:
    """:func:`encode_example` with the first whole ``word`` of ``answer`` replaced by ``replacement``; also
    returns the positions of the replacement's tokens, which get no loss (see :func:`collate`)."""
    m = re.search(rf"(?<![a-z]){re.escape(word)}(?![a-z])", answer)
    if m is None:
        raise PixprefError(f"{word!r} is not a word of the answer {answer!r}")
    tok = processor.tokenizer
    ids, n_prompt = encode_example(processor, messages, None)
    head = tok(" " + answer[:m.start()].rstrip(), add_special_tokens=False)["input_ids"]
    middle = tok(" " + replacement, add_special_tokens=False)["input_ids"]
    tail = tok(answer[m.end():], add_special_tokens=False)["input_ids"]
    start = len(ids) + len(head)
    return ids + head + middle + tail + [tok.eos_token_id], n_prompt, list(range(start, start + len(middle)))


def pixel_tensor(images: np.ndarray, processor: Any):
    """uint8 ``(N, H, W, 3)`` -> normalised float ``(N, 3, H, W)``, equal to the image processor's output
    for images already at its size (checked in tests)."""
    import torch

    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
    return (x - mean) / std


def collate(examples: list[tuple], pad_id: int, left: bool = False):
    """Pad ``(ids, n_prompt)`` or ``(ids, n_prompt, unlabelled positions)`` -> (input_ids, attention_mask,
    labels) with labels on answer tokens only (and not on the unlabelled positions)."""
    import torch

    length = max(len(ex[0]) for ex in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for b, (ids, n_prompt, *rest) in enumerate(examples):
        start = length - len(ids) if left else 0
        input_ids[b, start: start + len(ids)] = torch.tensor(ids)
        mask[b, start: start + len(ids)] = 1
        labels[b, start + n_prompt: start + len(ids)] = torch.tensor(ids[n_prompt:], dtype=torch.long)
        for pos in (rest[0] if rest else ()):
            labels[b, start + pos] = -100
    return input_ids, mask, labels


# ---- evaluation ----------------------------------------------------------------------------------------


def generate_captions(model: Any, processor: Any, images: np.ndarray, batch_size: int = 50,
                      max_new_tokens: int = 48) -> list[str]:
    """Greedy captions for uint8 ``(N, H, W, 3)`` images with the caption prompt."""
    import torch

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    ids, _ = encode_example(processor, _user([None, " " + CAPTION_QUESTION]), None)
    out = []
    for s in range(0, len(images), batch_size):
        chunk = images[s: s + batch_size]
        input_ids = torch.tensor([ids] * len(chunk), device=device)  # (B, T): same prompt, no padding
        with torch.no_grad():
            gen = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values=pixel_tensor(chunk, processor).to(device, dtype),
                max_new_tokens=max_new_tokens,
                do_sample=False,
            )
        out += processor.tokenizer.batch_decode(gen[:, input_ids.shape[1]:], skip_special_tokens=True)
    return [t.strip() for t in out]


def caption_accuracy(model: Any, processor: Any, scenes: list[Scene], size: int = 32) -> dict[str, Any]:
    """Per-attribute accuracy of greedy captions; a malformed caption counts wrong on every attribute.

    Returns ``n``, ``parsed`` (fraction of well-formed captions), ``accuracy`` (attribute -> fraction),
    ``captions`` and ``hits`` (per scene: attribute -> 0/1).
    """
    from pixpref.toyworld.render import render_batch

    captions = generate_captions(model, processor, render_batch(scenes, size))
    per_scene = []
    for scene, text in zip(scenes, captions):
        got = parse_caption(text)
        want = true_attributes(scene)
        per_scene.append({a: int(got is not None and got[a] == want[a]) for a in ATTRIBUTES})
    n = max(1, len(scenes))
    acc = {a: sum(h[a] for h in per_scene) / n for a in ATTRIBUTES}
    parsed = sum(parse_caption(t) is not None for t in captions) / n
    return {"n": len(scenes), "parsed": parsed, "accuracy": acc, "captions": captions, "hits": per_scene}


def held_out_scenes(n: int, seed: int) -> list[Scene]:
    """Fresh scenes from a separate seed; every 4th uses a held-out shape-colour combination."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, combos="held_out" if i % 4 == 3 else "seen") for i in range(n)]


# ---- auxiliary attribute probe ---------------------------------------------------------------------------

PROBE_CLASSES = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "size": ("small", "medium", "large"),
    "shade": ("pastel", "vivid", "dark"),
    "texture": ("solid", "stripes", "dots"),
    "outline": ("plain", "outlined"),
    "horizontal": ("left", "centre", "right"),
    "vertical": ("top", "middle", "bottom"),
    "background": ("dark", "grey", "light"),
}


def probe_targets(scenes: list[Scene]) -> tuple[np.ndarray, np.ndarray]:
    """Per scene: class index of every caption attribute ``(N, 9)`` and the continuous style parameters
    (size, cx, cy, background lightness) scaled to [0, 1] ``(N, 4)``."""
    from pixpref.toyworld.scene import POS_RANGE, SIZE_RANGE

    cls = np.array([[PROBE_CLASSES[a].index(true_attributes(s)[a]) for a in PROBE_CLASSES] for s in scenes])
    (slo, shi), (plo, phi) = SIZE_RANGE, POS_RANGE
    reg = np.array([[(s.size - slo) / (shi - slo), (s.cx - plo) / (phi - plo), (s.cy - plo) / (phi - plo),
                     s.bg_lightness] for s in scenes], dtype=np.float32)
    return cls, reg


def make_probe(n_tokens: int, dim: int):
    """A linear read-out of every caption attribute from an image's projected tokens (what the LM sees).

    It speeds up learning to see style (the LM alone takes long to discover the image); it is discarded
    after training."""
    import torch

    return torch.nn.Linear(n_tokens * dim, sum(len(v) for v in PROBE_CLASSES.values()) + 4)


def probe_loss(probe: Any, feats, cls, reg, weights: dict[str, float] | None = None):
    """feats ``(B, n_tokens, dim)``; cls ``(B, 9)`` long; reg ``(B, 4)`` -> weighted mean CE over the
    attributes (``weights``: attribute -> weight, default 1) + MSE."""
    import torch.nn.functional as F

    weights = weights or {}
    out = probe(feats.flatten(1))  # (B, classes + 4)
    loss, start, total = 0.0, 0, 0.0
    for j, (attr, names) in enumerate(PROBE_CLASSES.items()):
        w = float(weights.get(attr, 1.0))
        loss = loss + w * F.cross_entropy(out[:, start: start + len(names)], cls[:, j])
        start += len(names)
        total += w
    return loss / max(total, 1e-8) + F.mse_loss(out[:, start:], reg) * 10.0


# ---- training ------------------------------------------------------------------------------------------


def warm_up_vision(vision_tower: Any, pixels, probe_cls, probe_reg, cfg: PretrainConfig, rng, writer=None) -> float:
    """Train ``vision_tower`` alone for ``cfg.vision_steps`` with a linear attribute probe on its patch
    tokens (the probe is discarded); returns the wall time. Logged as task ``vision``."""
    import torch
    from tqdm.auto import tqdm

    n_tokens = cfg.model.image_tokens
    probe = make_probe(n_tokens, vision_tower.config.hidden_size)
    params = list(vision_tower.parameters()) + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    vision_tower.train()
    t0 = time.time()
    bar = tqdm(range(cfg.vision_steps), desc="vision warm-up")
    for step in bar:
        idx = torch.from_numpy(rng.choice(len(pixels), size=cfg.vision_batch_size, replace=False))
        lr = warmup_cosine(step, cfg.vision_lr, min(cfg.warmup_steps, cfg.vision_steps // 10),
                           cfg.vision_steps, cfg.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        feats = vision_tower(pixel_values=pixels[idx]).last_hidden_state[:, 1:]  # drop CLS, as the LM does
        loss = probe_loss(probe, feats, probe_cls[idx], probe_reg[idx], cfg.vision_attribute_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if writer is not None and (step % cfg.log_every == 0 or step == cfg.vision_steps - 1):
            writer.writerow([step, "vision", "", f"{loss.item():.4f}", f"{lr:.3e}", f"{time.time() - t0:.1f}"])
        bar.set_postfix(probe=f"{loss.item():.3f}")
    return time.time() - t0


def _other_colour(rng: np.random.Generator, colour: str) -> str:
    others = [c for c in COLOURS if c != colour]
    return others[int(rng.integers(len(others)))]


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    return warmup_cosine(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)


def run(out_dir: Path, cfg: PretrainConfig) -> dict:
    """Train the toy VLM; save it to ``out_dir/vlm``; return final metrics."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from tqdm.auto import tqdm

    from pixpref.models.vlm import build_processor, build_tokenizer, build_toy_vlm, save_vlm
    from pixpref.toyworld.render import render_batch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir) / "vlm"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)

    # 1. tokenizer, processor, model
    corpus = tokenizer_corpus(rng, cfg.tokenizer_texts)
    if cfg.init_from:
        from pixpref.models.vlm import load_vlm

        model, processor = load_vlm(cfg.init_from)
        model = model.float()
        tokenizer = processor.tokenizer
    else:
        tokenizer = build_tokenizer(corpus, cfg.model.vocab_size)
        processor = build_processor(tokenizer, cfg.model)
        model = build_toy_vlm(cfg.model, tokenizer, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())

    # 2. data: a pool of rendered training scenes (seen combos only)
    scenes = [sample_scene(rng, combos="seen") for _ in tqdm(range(cfg.train_scenes), desc="scenes", leave=False)]
    pixels = pixel_tensor(render_batch(scenes, cfg.model.image_size), processor)  # (N, 3, H, W)
    probe_cls, probe_reg = (torch.from_numpy(a) for a in probe_targets(scenes))
    probe = make_probe(cfg.model.image_tokens, model.config.get_text_config().hidden_size)
    tasks = ("caption", "compare", "pairs")
    weights = np.array([cfg.caption_weight, cfg.compare_weight, cfg.pairs_weight])
    weights = weights / weights.sum()

    # 3. optimiser (after the optional vision warm-up)
    log_path = out / "train_log.csv"
    with open(log_path, "w", newline="") as f:  # one log for the warm-up and the LM tasks
        writer = csv.writer(f)
        writer.writerow(["step", "task", "loss", "probe_loss", "lr", "seconds"])
        vision_seconds = 0.0
        if cfg.vision_steps:
            vision_seconds = warm_up_vision(model.model.vision_tower, pixels, probe_cls, probe_reg, cfg, rng, writer)
        if cfg.freeze_vision:
            model.model.vision_tower.requires_grad_(False)
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params += list(probe.named_parameters(prefix="probe"))
        decay = [p for n, p in params if p.ndim >= 2]
        no_decay = [p for n, p in params if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, 0.98),
        )

        # 4. loop
        model.train()
        t0 = time.time()
        ema = None
        bar = tqdm(range(cfg.steps), desc="pretrain vlm")
        for step in bar:
            task = tasks[int(rng.choice(3, p=weights))]
            n_img = {"caption": 1, "compare": 2}.get(task, 2 * int(rng.integers(1, cfg.max_pairs + 1)))
            examples, image_idx = [], []
            # interleaved prompts are ~5x longer: half the batch keeps the step cost in line
            for _ in range(cfg.batch_size if task != "pairs" else max(1, cfg.batch_size // 2)):
                idx = rng.choice(len(scenes), size=n_img, replace=False)
                messages, used, answer = make_example(task, idx, scenes, rng)
                if task != "compare" and cfg.caption_colour_swap and rng.random() < cfg.caption_colour_swap:
                    colour = parse_caption(answer)["colour"]
                    examples.append(encode_with_swapped_word(processor, messages, answer, colour,
                                                             _other_colour(rng, colour)))
                else:
                    examples.append(encode_example(processor, messages, answer))
                image_idx += used
            input_ids, mask, labels = collate(examples, tokenizer.pad_token_id)
            lr = _lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            lm_loss = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels[image_idx],
                            labels=labels).loss
            p_loss = torch.zeros(())
            if cfg.probe_weight > 0:
                feats = model.model.get_image_features(pixel_values=pixels[image_idx]).pooler_output
                feats = torch.stack(list(feats))  # (n_images, image_tokens, hidden)
                p_loss = probe_loss(probe, feats, probe_cls[image_idx], probe_reg[image_idx])
            loss = lm_loss + cfg.probe_weight * p_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.grad_clip)
            opt.step()
            value = lm_loss.item()
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                writer.writerow([step, task, f"{value:.5f}", f"{p_loss.item():.4f}", f"{lr:.3e}",
                                 f"{time.time() - t0:.1f}"])
                f.flush()
                bar.set_postfix(loss=f"{ema:.3f}", task=task)
    train_seconds = time.time() - t0

    # 5. save (fp16) and evaluate the saved weights' precision on held-out scenes
    model.eval()
    save_vlm(model, processor, out, fp16=True)
    model = model.float()
    metrics: dict[str, Any] = {
        "params": n_params,
        "steps": cfg.steps,
        "init_from": cfg.init_from,
        "vision_steps": cfg.vision_steps,
        "vision_seconds": round(vision_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "steps_per_second": round(cfg.steps / train_seconds, 3),
        "final_lm_loss_ema": round(float(ema), 4),
    }
    if cfg.eval_scenes > 0:
        res = caption_accuracy(model, processor, held_out_scenes(cfg.eval_scenes, cfg.eval_seed),
                               cfg.model.image_size)
        metrics["heldout_caption_parsed"] = res["parsed"]
        metrics["heldout_caption_accuracy"] = {k: round(v, 4) for k, v in res["accuracy"].items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
