"""Renderer: Scene -> small RGB image (uint8, H x W x 3).

Shapes are drawn on a 4x supersampled canvas with PIL and box-filtered down, so edges are anti-aliased
and measurements from pixels vary smoothly with the scene parameters.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pixpref.toyworld.scene import BG_SATURATION, COLOURS, Scene

SUPERSAMPLE = 4

# shade -> (saturation, value) in HSV for the object's main colour
SHADE_SV = {"pastel": (0.42, 1.0), "vivid": (0.92, 0.95), "dark": (0.92, 0.48)}
TEXTURE_VALUE_FACTOR = 0.55  # stripes/dots are the same hue at this fraction of the value
OUTLINE_RGB = (0.0, 0.0, 0.0)
OUTLINE_WIDTH = 0.035  # fraction of the image side
# scene.bg_lightness in [0, 1] maps onto this HLS lightness range: the background keeps a visible hue
# (and a dark outline stays visible) even at the extremes
BG_LIGHTNESS_RANGE = (0.15, 0.9)


def object_rgb(colour: str, shade: str) -> tuple[float, float, float]:
    s, v = SHADE_SV[shade]
    return colorsys.hsv_to_rgb(COLOURS[colour] / 360.0, s, v)


def background_rgb(lightness: float, hue: float) -> tuple[float, float, float]:
    lo, hi = BG_LIGHTNESS_RANGE
    return colorsys.hls_to_rgb(hue % 1.0, lo + (hi - lo) * lightness, BG_SATURATION)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        h = r * 0.86
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [
            (cx + r * math.cos(math.radians(a)), cy - r * math.sin(math.radians(a)) + r * 0.15)
            for a in (90, 210, 330)
        ]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            a = math.radians(90 + 36 * i)
            pts.append((cx + rad * math.cos(a), cy - rad * math.sin(a)))
        return pts
    if shape == "cross":
        a, b = r, r * 0.34
        return [
            (cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b),
            (cx + a, cy + b), (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a),
            (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b),
        ]
    return None


def shape_mask(shape: str, cx: float, cy: float, r: float, side: int) -> np.ndarray:
    """Boolean mask (side x side) of a shape with centre (cx, cy) and radius r, all in pixels."""
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    poly = _polygon(shape, cx, cy, r)
    if poly is None:  # circle
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(poly, fill=255)
    return np.asarray(canvas) > 127


def grow_mask(mask: np.ndarray, side: int) -> np.ndarray:
    """``mask`` grown by the outline width (a ``side`` x ``side`` supersampled canvas)."""
    from scipy.ndimage import maximum_filter

    width = max(2, round(side * OUTLINE_WIDTH))
    return maximum_filter(mask, size=2 * width + 1, mode="constant", cval=False)


def render(scene: Scene, size: int = 32, rng: np.random.Generator | None = None) -> np.ndarray:
    """Render ``scene`` to a ``(size, size, 3)`` uint8 array.

    ``rng`` is only used when ``scene.noise > 0`` (defaults to a generator seeded from the scene).
    """
    side = size * SUPERSAMPLE
    cx, cy, r = scene.cx * side, scene.cy * side, scene.size * side

    img = np.empty((side, side, 3), dtype=np.float32)
    img[:] = background_rgb(scene.bg_lightness, scene.bg_hue)

    mask = shape_mask(scene.shape, cx, cy, r, side)
    if scene.outline == "dark":
        ring = grow_mask(mask, side) & ~mask
        img[ring] = OUTLINE_RGB

    main = np.array(object_rgb(scene.colour, scene.shade), dtype=np.float32)
    h, s, v = colorsys.rgb_to_hsv(*main)
    second = np.array(colorsys.hsv_to_rgb(h, s, v * TEXTURE_VALUE_FACTOR), dtype=np.float32)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    if scene.texture == "stripes":
        period = side / 8.0
        pattern = ((xx + yy) % period) < period / 2
    elif scene.texture == "dots":
        period = side / 8.0
        dx = (xx % period) - period / 2
        dy = (yy % period) - period / 2
        pattern = dx * dx + dy * dy < (period * 0.28) ** 2
    else:
        pattern = np.zeros((side, side), dtype=bool)
    img[mask] = main
    img[mask & pattern] = second

    # box-filter down to the output size (anti-aliasing)
    img = img.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))

    if scene.blur > 0:
        pil = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
        img = np.asarray(pil.filter(ImageFilter.GaussianBlur(radius=scene.blur * size / 32)), np.float32) / 255
    if scene.noise > 0:
        rng = rng if rng is not None else np.random.default_rng(abs(hash(scene)) % (2**32))
        img = img + rng.normal(0.0, scene.noise, img.shape).astype(np.float32)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def render_batch(scenes, size: int = 32, rng: np.random.Generator | None = None) -> np.ndarray:
    """Render many scenes -> ``(N, size, size, 3)`` uint8."""
    return np.stack([render(s, size, rng) for s in scenes])


def make_grid(images: np.ndarray, ncols: int = 8, pad: int = 2, upscale: int = 1) -> Image.Image:
    """Tile ``(N, H, W, 3)`` uint8 images into one PIL image (white padding)."""
    n, h, w, _ = images.shape
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    out = Image.fromarray(grid)
    if upscale > 1:
        out = out.resize((out.width * upscale, out.height * upscale), Image.NEAREST)
    return out
