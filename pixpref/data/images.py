"""Safe image decoding to RGB uint8, and encoding for writers.

Every image that enters pixpref goes through :func:`load_rgb` / :func:`decode_rgb`, which return an
(H, W, 3) uint8 array and apply one documented policy:

* undecodable or truncated bytes -> :class:`PixprefError` naming the row/file (``where``);
* more than ``max_pixels`` pixels (default 4096 x 4096) -> refused *before* the pixels are decoded;
* transparency (RGBA, LA, palette with transparency) -> composited on white (``alpha="white"``, the
  default: transparent areas become white, as a viewer shows them) or the alpha channel is dropped
  (``alpha="drop"``: the stored colour under transparent pixels is kept);
* greyscale, bilevel, palette, CMYK, YCbCr -> converted to RGB;
* 16-bit greyscale (``I;16*``) and 32-bit integer (``I``) -> 0..65535 scaled to 0..255 (x / 257, rounded);
  float (``F``) -> 0..1 scaled to 0..255 when its maximum is <= 1, otherwise clipped to 0..255;
* EXIF orientation is applied;
* optional ``size``: the shorter side is resized to ``size`` (bicubic) and the centre cropped to a square.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from pixpref.errors import PixprefError, unknown_name

DEFAULT_MAX_PIXELS = 4096 * 4096
ALPHA_POLICIES = ("white", "drop")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb_array(img: Image.Image, alpha: str) -> np.ndarray:
    """A decoded PIL image in any mode -> (H, W, 3) uint8."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        arr = np.asarray(img).astype(np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        if alpha == "white":
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgba = Image.alpha_composite(background, rgba)
        return np.asarray(rgba.convert("RGB"), dtype=np.uint8)
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def resize_center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3): shorter side resized to ``size`` (bicubic), centre crop."""
    h, w = arr.shape[:2]
    if (h, w) == (size, size):
        return arr
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = Image.fromarray(arr).resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _open_checked(img: Image.Image, where: str, max_pixels: int) -> Image.Image:
    w, h = img.size
    if w < 1 or h < 1:
        raise PixprefError(f"{where}: image has an empty size {w}x{h}")
    if w * h > max_pixels:
        raise PixprefError(
            f"{where}: image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}; "
            "raise data.max_image_pixels to accept it"
        )
    return img


def decode_rgb(data: bytes, where: str = "image", *, size: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, alpha: str = "white") -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 (see the module docstring for the policy)."""
    if alpha not in ALPHA_POLICIES:
        raise unknown_name("alpha policy", alpha, ALPHA_POLICIES)
    if data is None or len(data) == 0:
        raise PixprefError(f"{where}: image bytes are empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                _open_checked(img, where, max_pixels)
                img.load()  # raises OSError on truncated data
                try:
                    img = ImageOps.exif_transpose(img)
                except Exception:  # a broken EXIF block must not lose an otherwise good image
                    pass
                arr = _to_rgb_array(img, alpha)
    except PixprefError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            EOFError) as e:
        head = bytes(data[:8]).hex()
        raise PixprefError(f"{where}: cannot decode image ({len(data)} bytes, starts {head}): {e}") from None
    if size is not None:
        arr = resize_center_crop(arr, size)
    return arr


def load_rgb(src: Any, where: str = "image", *, size: int | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS, alpha: str = "white") -> np.ndarray:
    """Bytes, a file path, a PIL image or an array -> (H, W, 3) uint8."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return decode_rgb(bytes(src), where, size=size, max_pixels=max_pixels, alpha=alpha)
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.is_file():
            raise PixprefError(f"{where}: image file not found: {path}")
        return decode_rgb(path.read_bytes(), f"{where} ({path})", size=size, max_pixels=max_pixels, alpha=alpha)
    if isinstance(src, Image.Image):
        _open_checked(src, where, max_pixels)
        arr = _to_rgb_array(src, alpha)
    elif isinstance(src, np.ndarray):
        arr = array_to_rgb(src, where)
    else:
        raise PixprefError(f"{where}: cannot use a {type(src).__name__} as an image; "
                           "valid kinds: bytes, file path, PIL image, numpy array")
    if size is not None:
        arr = resize_center_crop(arr, size)
    return arr


def array_to_rgb(arr: np.ndarray, where: str = "image") -> np.ndarray:
    """(H, W), (H, W, 1|3|4) uint8 array -> (H, W, 3) uint8 (alpha dropped). Floats in [0, 1] are scaled."""
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
                raise PixprefError(f"{where}: float image arrays must hold values in [0, 1]")
            arr = np.rint(arr * 255.0).astype(np.uint8)
        else:
            raise PixprefError(f"{where}: image arrays must be uint8 or float in [0, 1], got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise PixprefError(f"{where}: expected an (H, W, 3) image array, got shape {tuple(arr.shape)}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def encode_image(src: Any, fmt: str = "PNG", where: str = "image", quality: int = 95) -> bytes:
    """Encode bytes/array/PIL image to ``fmt`` bytes (bytes are passed through unchanged)."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    if isinstance(src, Image.Image):
        img = src
    else:
        img = Image.fromarray(load_rgb(src, where))
    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt.upper() in ("JPEG", "JPG") else {}
    if fmt.upper() in ("JPEG", "JPG") and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    img.save(buf, format="JPEG" if fmt.upper() == "JPG" else fmt.upper(), **kwargs)
    return buf.getvalue()
