"""The oracle: style measurements and content detectors computed from pixels alone.

Everything here takes uint8 images ``(N, H, W, 3)`` (or one ``(H, W, 3)`` image) and never sees a
:class:`~pixpref.toyworld.scene.Scene`, so it applies equally to rendered images and to a generative
model's samples. It is the ground truth that synthetic users' utilities and every quality figure rest on.

Measurements (:data:`FEATURES`, each an ``(N,)`` float array, normalised to about [0, 1]):

    bg_lightness    background HLS lightness, rescaled so the renderer's range maps to [0, 1]
    bg_hue          background hue in [0, 1) (circular; compare with :func:`hue_distance`)
    area            object area as a fraction of the image, divided by 0.3 and clipped to [0, 1]
    size            object radius (from area and the detected shape), rescaled so SIZE_RANGE -> [0, 1]
    cx, cy          object centroid, rescaled so POS_RANGE -> [0, 1]
    obj_lightness   HLS lightness of the object's main colour (pastel high, dark low)
    obj_saturation  HSV saturation of the object's main colour (pastel low, vivid/dark high)
    texture         contrast of the pattern inside the object (0 solid, ~1 striped or dotted)
    outline         darkness of a rim around the object relative to its neighbours (0 none, ~1 dark)
    sharpness       edge sharpness (1 crisp, 0 at the renderer's strongest blur)
    noise           pixel noise level (0 clean, 1 at noise std 0.2)

Detectors: :func:`detect` names the object's colour (one of COLOURS) and shape (one of SHAPES), or
``"none"`` when no object is found; :func:`prompt_adherence` checks them against prompts.

Images that are blank, noisy or otherwise imperfect never raise: measurements fall back to neutral
values (e.g. centroid 0.5, area 0) and the detectors answer ``"none"``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import numpy as np

from pixpref.errors import PixprefError, unknown_name
from pixpref.toyworld.render import BG_LIGHTNESS_RANGE, OUTLINE_RGB, SUPERSAMPLE, grow_mask, shape_mask
from pixpref.toyworld.scene import COLOURS, POS_RANGE, SHAPES, SIZE_RANGE

FEATURES = (
    "bg_lightness", "bg_hue", "area", "size", "cx", "cy", "obj_lightness", "obj_saturation",
    "texture", "outline", "sharpness", "noise",
)
NONE = "none"

_MIN_OBJECT_PIXELS = 4  # at 32 x 32; scaled with the image area
_TEXTURE_RANGE = (0.004, 0.04)  # mean pattern share inside the object -> texture 0 and 1
_OUTLINE_RANGE = (0.15, 0.55)  # mean outline share in the ring around the object -> outline 0 and 1
_MAX_BLUR = 1.5  # Gaussian blur sigma (pixels at 32 px) that maps to sharpness 0
_NOISE_SCALE = 0.2


# ---------------------------------------------------------------------------------------------- helpers


def as_images(images: np.ndarray) -> np.ndarray:
    """Check and convert uint8 images to float32 in [0, 1], shape ``(N, H, W, 3)``."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise PixprefError(f"images must have shape (N, H, W, 3) or (H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise PixprefError(f"images must be uint8, got {arr.dtype}")
    if arr.shape[1] < 16 or arr.shape[2] < 16:
        raise PixprefError(f"images must be at least 16 x 16 pixels, got {arr.shape[1]} x {arr.shape[2]}")
    return arr.astype(np.float32) / 255.0


def _hsv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hue in [0, 1), HSV saturation, HSV value and HLS lightness of ``(..., 3)`` RGB."""
    mx, mn = x.max(-1), x.min(-1)
    chroma = mx - mn
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.where(chroma > 1e-6, chroma, 1.0)
    hue = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(chroma > 1e-6, hue / 6.0, 0.0) % 1.0
    sat = np.where(mx > 1e-6, chroma / np.where(mx > 1e-6, mx, 1.0), 0.0)
    return hue, sat, mx, (mx + mn) / 2.0


def _shift_reduce(mask: np.ndarray, radius: int, op) -> np.ndarray:
    """Square max/min filter of a ``(N, H, W)`` array (edges padded with the neutral element)."""
    out = mask.copy()
    pad_val = mask.min() if op is np.maximum else mask.max()
    n, h, w = mask.shape
    padded = np.full((n, h + 2 * radius, w + 2 * radius), pad_val, dtype=mask.dtype)
    padded[:, radius:radius + h, radius:radius + w] = mask
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            out = op(out, padded[:, radius + dy:radius + dy + h, radius + dx:radius + dx + w])
    return out


def _dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    return _shift_reduce(mask, radius, np.maximum) if radius > 0 else mask


def _erode(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    return _shift_reduce(mask, radius, np.minimum) if radius > 0 else mask


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sig = (0, sigma, sigma, 0) if x.ndim == 4 else (0, sigma, sigma)
    return gaussian_filter(x, sigma=sig, mode="nearest")


def _masked_percentile(values: np.ndarray, mask: np.ndarray, q: float, default: float) -> np.ndarray:
    """Per-image percentile of ``values`` over ``mask`` (both ``(N, H, W)``); ``default`` where empty."""
    v = np.where(mask, values, np.nan).reshape(len(values), -1)
    out = np.full(len(values), default, dtype=np.float64)
    has = mask.reshape(len(mask), -1).any(1)
    if has.any():
        out[has] = np.nanpercentile(v[has], q, axis=1)
    return out


def _masked_mean(values: np.ndarray, mask: np.ndarray, default: float) -> np.ndarray:
    cnt = mask.reshape(len(mask), -1).sum(1)
    tot = np.where(mask, values, 0.0).reshape(len(mask), -1).sum(1)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), default)


def hue_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Circular distance between hues in [0, 1) (result in [0, 0.5])."""
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) % 1.0
    return np.minimum(d, 1.0 - d)


# -------------------------------------------------------------------------------------- shape templates


@functools.cache
def _shape_geometry(shape: str) -> tuple[float, float, float]:
    """(area / r^2, centroid offset x / r, centroid offset y / r) of a shape drawn with radius r."""
    side, r = 1024, 300.0
    m = shape_mask(shape, side / 2, side / 2, r, side)
    yy, xx = np.nonzero(m)
    return m.sum() / r**2, (xx.mean() + 0.5 - side / 2) / r, (yy.mean() + 0.5 - side / 2) / r


def _template(shape: str, cx: float, cy: float, r: float, side: int, outlined: bool = False) -> np.ndarray:
    """Anti-aliased shape coverage ``(side, side)`` in [0, 1]; centre/radius in pixels of ``side``.

    With ``outlined`` the coverage includes the renderer's outline ring."""
    s = SUPERSAMPLE
    m = shape_mask(shape, cx * s, cy * s, r * s, side * s)
    if outlined:
        m = grow_mask(m, side * s)
    return m.astype(np.float32).reshape(side, s, side, s).mean(axis=(1, 3))


def _match_shapes(obj: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> tuple[list[str], np.ndarray, list]:
    """Best-matching shape per mask (IoU with an equal-area template at the centroid), its radius (px)
    and its placement ``(shape, cx, cy, r)`` (None where no shape matched)."""
    n, side, _ = obj.shape
    names, radii, placements = [], np.zeros(n), []
    min_px = _MIN_OBJECT_PIXELS * side * side / 1024
    for i in range(n):
        area = float(obj[i].sum())
        best, best_iou, best_r, place = NONE, 0.3, 0.0, None
        if area >= min_px:
            for shape in SHAPES:
                k, ox, oy = _shape_geometry(shape)
                r = float(np.sqrt(area / k))
                tcx, tcy = cx[i] - ox * r, cy[i] - oy * r
                tmpl = _template(shape, tcx, tcy, r, side) > 0.5
                inter = np.logical_and(tmpl, obj[i]).sum()
                iou = inter / max(1, np.logical_or(tmpl, obj[i]).sum())
                if iou > best_iou:
                    best, best_iou, best_r, place = shape, iou, r, (shape, tcx, tcy, r)
        names.append(best)
        placements.append(place)
        radii[i] = best_r if best != NONE else np.sqrt(area / np.pi)
    return names, radii, placements


def _fit_sigma(tmpl: np.ndarray, cover: np.ndarray, grid: np.ndarray) -> tuple[float, float]:
    """(sigma, amplitude) minimising ||amplitude * blur_sigma(tmpl) - cover||^2 over ``grid``.

    The Gaussian blurs are applied together in the Fourier domain (the object sits away from the
    border, so wrap-around does not matter)."""
    h, w = tmpl.shape
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    gains = np.exp(-2 * np.pi**2 * grid[:, None, None] ** 2 * (fx**2 + fy**2))  # (S, H, W//2+1)
    blurred = np.fft.irfft2(np.fft.rfft2(tmpl)[None] * gains, s=(h, w))  # (S, H, W)
    bb = (blurred * blurred).sum((1, 2))
    amps = (blurred * cover[None]).sum((1, 2)) / np.maximum(bb, 1e-9)
    errs = ((amps[:, None, None] * blurred - cover[None]) ** 2).sum((1, 2))
    j = int(np.argmin(errs))
    sigma = float(grid[j])
    if 0 < j < len(grid) - 1:  # parabolic refinement between grid points
        e0, e1, e2 = errs[j - 1], errs[j], errs[j + 1]
        den = e0 - 2 * e1 + e2
        step = 0.5 * (e0 - e2) / den if den > 1e-12 else 0.0
        sigma += float(np.clip(step, -0.5, 0.5)) * float(grid[1] - grid[0])
    return sigma, float(amps[j])


def _fit_blur(coverage: np.ndarray, placements: list, outlined: np.ndarray) -> np.ndarray:
    """Blur sigma (pixels) that best turns each matched crisp template into the measured coverage.

    ``coverage`` ``(N, H, W)`` is the non-background share of each pixel. Blur keeps its mass and
    centroid, so the crisp template is placed from those (mass divided by the fitted amplitude, which
    absorbs an error in the estimated object colour). Images without a matched shape get
    :data:`_MAX_BLUR` (nothing sharp to see)."""
    n, side, _ = coverage.shape
    grid = np.linspace(0.0, 2.0, 21) * side / 32.0
    out = np.full(n, _MAX_BLUR * side / 32.0)
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    for i, place in enumerate(placements):
        c = np.clip(coverage[i], -1.0, 2.0)  # not clipped at 0 or 1: that would bias the mass under noise
        mass = c.sum()
        if place is None or mass <= 0:
            continue
        shape, _, _, r0 = place
        mx, my = (c * xx).sum() / mass, (c * yy).sum() / mass
        _, ox, oy = _shape_geometry(shape)
        areas = [_template(shape, mx - ox * r, my - oy * r, r, side, bool(outlined[i])).sum()
                 for r in (r0, 1.1 * r0)]
        slope = (np.sqrt(areas[1]) - np.sqrt(areas[0])) / (0.1 * r0)
        amp = 1.0
        for _ in range(2):
            r = r0 + (np.sqrt(mass / max(amp, 0.2)) - np.sqrt(areas[0])) / slope if slope > 0 else r0
            r = float(np.clip(r, 0.5 * r0, 1.5 * r0))
            tmpl = _template(shape, mx - ox * r, my - oy * r, r, side, outlined=bool(outlined[i]))
            out[i], amp = _fit_sigma(tmpl, c, grid)
    return out


# ------------------------------------------------------------------------------------------ core analysis


def _analyse(images: np.ndarray) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Measure one chunk of images: (features, colour names, shape names)."""
    x = as_images(images)  # (N, H, W, 3)
    n, h, w, _ = x.shape
    scale = h / 32.0

    # 1. background: per-channel median of a border band; noise: robust spread of the band around it
    b = max(1, round(h / 16))
    border = np.concatenate(
        [x[:, :b].reshape(n, -1, 3), x[:, -b:].reshape(n, -1, 3),
         x[:, b:-b, :b].reshape(n, -1, 3), x[:, b:-b, -b:].reshape(n, -1, 3)], axis=1)
    bg = np.median(border, axis=1)  # (N, 3)
    noise = 1.4826 * np.median(np.abs(border - bg[:, None, :]).reshape(n, -1), axis=1)  # (N,)
    bg_hue, _, _, bg_light = _hsv(bg)

    # 2. object region: pixels far from the background colour (denoised first where noisy)
    xs = x.copy()
    noisy = noise > 0.02
    if noisy.any():
        xs[noisy] = _smooth(x[noisy], 1.0 * scale)
    resid_noise = np.where(noisy, noise / 3.5, noise)
    dist = np.linalg.norm(xs - bg[:, None, None, :], axis=-1)  # (N, H, W)
    thr = np.maximum(0.1, 3.0 * resid_noise)[:, None, None]
    full = dist > thr  # object, its outline and its anti-aliased rim
    hue, sat, val, light = _hsv(xs)

    # 3. object's main colour: the lightest strongly coloured pixels (a pattern is a darker version)
    cand = full & (sat > 0.3) & (val > 0.12)
    inner = _erode(full, max(1, round(scale))) & cand  # away from edges blurred into the background
    has_inner = inner.reshape(n, -1).sum(1) >= 3
    cand[has_inner] = inner[has_inner]
    v_hi = _masked_percentile(val, cand, 75, 2.0)[:, None, None]
    top = cand & (val >= v_hi - 1e-6)
    main = np.stack([_masked_percentile(xs[..., c], top, 50, np.nan) for c in range(3)], -1)  # (N, 3)
    found = ~np.isnan(main).any(1)
    main = np.where(found[:, None], main, bg)

    # 4. unmix each pixel into background, main colour and outline black (they sum to one):
    #    p - K = beta (B - K) + omega (O - K); a pattern pixel (0.55 O) has omega ~ 0.55
    k = np.asarray(OUTLINE_RGB, dtype=np.float32)
    basis = np.stack([bg - k, main - k], -1)  # (N, 3, 2)
    gram = basis.transpose(0, 2, 1) @ basis + 1e-5 * np.eye(2)  # (N, 2, 2)
    rhs = (xs - k).reshape(n, -1, 3) @ basis  # (N, HW, 2)
    coef = rhs @ np.linalg.inv(gram).transpose(0, 2, 1)  # (N, HW, 2)
    omega = coef[..., 1].reshape(n, h, w)
    kappa = (1.0 - coef[..., 0] - coef[..., 1]).reshape(n, h, w)  # not clipped: its means stay unbiased
    omega[~found] = 0.0
    kappa[~found] = 0.0
    obj = omega > 0.4  # object (with its pattern) without its outline
    rim = _dilate(obj, 1) & ~obj
    # the object's interior: away from a dark outline, where object/outline mixtures look like pattern
    core = obj & ~_dilate(rim & (kappa > 0.25), 1)

    # 5. geometry
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    count = obj.reshape(n, -1).sum(1)
    cx_px = np.where(count > 0, (obj * (xx + 0.5)).reshape(n, -1).sum(1) / np.maximum(count, 1), w / 2)
    cy_px = np.where(count > 0, (obj * (yy + 0.5)).reshape(n, -1).sum(1) / np.maximum(count, 1), h / 2)
    shapes, radius_px, placements = _match_shapes(obj, cx_px, cy_px)

    # 6. object colour: main colour = the lighter part (a pattern is a darker version of the same hue)
    obj_light = _masked_percentile(light, core, 75, 0.0)
    obj_sat = _masked_percentile(sat, core, 75, 0.0)
    colours = _detect_colour(hue, sat, val, core & (sat > 0.25))
    colours = [c if s != NONE else NONE for c, s in zip(colours, shapes, strict=True)]

    # 7. texture: the pattern is a darker shade of the main colour, i.e. part outline-black in the unmixing
    tex = _masked_mean(kappa, core, 0.0)

    # 8. outline: share of outline-black in the ring of pixels just outside the object
    outline = _masked_mean(kappa, rim, 0.0)
    outline[count == 0] = 0.0

    # 9. edge sharpness from the fitted blur radius (see _fit_blur); 0 where there is nothing to measure
    cover = 1.0 - (((x - k).reshape(n, -1, 3) @ basis) @ np.linalg.inv(gram).transpose(0, 2, 1))[..., 0]
    cover = np.where(_dilate(full, max(1, round(2 * scale))), cover.reshape(n, h, w), 0.0)
    blur = _fit_blur(cover, placements, outline > 0.35) / scale  # (N,) px at 32 px
    sharp = 1.0 - blur / _MAX_BLUR
    sharp[count == 0] = 0.0

    lo_l, hi_l = BG_LIGHTNESS_RANGE
    feats = {
        "bg_lightness": (bg_light - lo_l) / (hi_l - lo_l),
        "bg_hue": bg_hue,
        "area": count / (h * w) / 0.3,
        "size": (radius_px / h - SIZE_RANGE[0]) / (SIZE_RANGE[1] - SIZE_RANGE[0]),
        "cx": (cx_px / w - POS_RANGE[0]) / (POS_RANGE[1] - POS_RANGE[0]),
        "cy": (cy_px / h - POS_RANGE[0]) / (POS_RANGE[1] - POS_RANGE[0]),
        "obj_lightness": obj_light,
        "obj_saturation": obj_sat,
        "texture": (tex - _TEXTURE_RANGE[0]) / (_TEXTURE_RANGE[1] - _TEXTURE_RANGE[0]),
        "outline": (outline - _OUTLINE_RANGE[0]) / (_OUTLINE_RANGE[1] - _OUTLINE_RANGE[0]),
        "sharpness": sharp,
        "noise": noise / _NOISE_SCALE,
    }
    feats = {k: np.clip(np.nan_to_num(v.astype(np.float64), nan=0.0), 0.0, 1.0) for k, v in feats.items()}
    feats["bg_hue"] = feats["bg_hue"] % 1.0
    return feats, colours, shapes


def _detect_colour(hue: np.ndarray, sat: np.ndarray, val: np.ndarray, mask: np.ndarray) -> list[str]:
    """Nearest named colour to the saturation-weighted circular mean hue over ``mask``."""
    wgt = np.where(mask, sat * val, 0.0).reshape(len(mask), -1)
    ang = 2 * np.pi * hue.reshape(len(hue), -1)
    c, s = (wgt * np.cos(ang)).sum(1), (wgt * np.sin(ang)).sum(1)
    mean_hue = (np.arctan2(s, c) / (2 * np.pi)) % 1.0
    names = list(COLOURS)
    centres = np.array([COLOURS[k] / 360.0 for k in names])
    nearest = hue_distance(mean_hue[:, None], centres[None, :]).argmin(1)
    return [names[j] if wgt[i].sum() > 1e-3 else NONE for i, j in enumerate(nearest)]


# -------------------------------------------------------------------------------------------- public API


CHUNK = 512  # images analysed at once (bounds memory for large batches)


def analyse(images: np.ndarray) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """:func:`measure` and :func:`detect` in one pass: ``(features, colours, shapes)``."""
    arr = np.asarray(images)
    if arr.ndim != 4 or len(arr) <= CHUNK:
        return _analyse(arr)
    parts = [_analyse(arr[i:i + CHUNK]) for i in range(0, len(arr), CHUNK)]
    feats = {k: np.concatenate([p[0][k] for p in parts]) for k in FEATURES}
    return feats, [c for p in parts for c in p[1]], [s for p in parts for s in p[2]]


def measure(images: np.ndarray) -> dict[str, np.ndarray]:
    """Measure :data:`FEATURES` of uint8 images ``(N, H, W, 3)`` -> ``{name: (N,) float64}``."""
    return analyse(images)[0]


def detect(images: np.ndarray) -> tuple[list[str], list[str]]:
    """(colour names, shape names) of the object in each image; ``"none"`` where none is found."""
    _, colours, shapes = analyse(images)
    return colours, shapes


def parse_prompt(prompt: str) -> tuple[str, str]:
    """The (colour, shape) a toy-world prompt asks for; unknown or missing words raise PixprefError."""
    words = re.findall(r"[a-z]+", prompt.lower())
    colours = [w for w in words if w in COLOURS]
    shapes = [w for w in words if w in SHAPES]
    if len(colours) != 1:
        cand = next((w for w in words if w not in _FILLER and w not in SHAPES), prompt)
        raise unknown_name("colour in prompt", cand, COLOURS) if not colours else PixprefError(
            f"prompt {prompt!r} names {len(colours)} colours; name exactly one of: {', '.join(sorted(COLOURS))}")
    if len(shapes) != 1:
        cand = next((w for w in words if w not in _FILLER and w not in COLOURS), prompt)
        raise unknown_name("shape in prompt", cand, SHAPES) if not shapes else PixprefError(
            f"prompt {prompt!r} names {len(shapes)} shapes; name exactly one of: {', '.join(sorted(SHAPES))}")
    return colours[0], shapes[0]


_FILLER = frozenset({"a", "an", "the", "of", "one", "in", "photo", "image", "picture"})


def prompt_adherence(images: np.ndarray, prompts: Sequence[str] | str) -> np.ndarray:
    """Boolean ``(N,)``: does each image show the colour and shape its prompt names?"""
    x = np.asarray(images)
    n = 1 if x.ndim == 3 else len(x)
    prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
    if len(prompts) != n:
        raise PixprefError(f"got {n} images but {len(prompts)} prompts")
    wanted = [parse_prompt(p) for p in prompts]
    colours, shapes = detect(images)
    return np.array([(c, s) == w for c, s, w in zip(colours, shapes, wanted, strict=True)], dtype=bool)
