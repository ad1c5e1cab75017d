"""The toy world's vocabulary and scene description.

A scene has **content**, named by the prompt (shape and colour), and **style**, never named in the
prompt and free to vary: object size, position, background lightness and hue, object shade, texture and
outline. Style is what synthetic users disagree about.

Ranges (image coordinates are fractions of the side, origin top-left):

    size          object radius, in [SIZE_RANGE]
    cx, cy        object centre, each in [POS_RANGE]
    bg_lightness  background lightness in [0, 1]
    bg_hue        background hue in [0, 1)
    shade         one of SHADES: pastel / vivid / dark variant of the named colour
    texture       one of TEXTURES: solid / stripes / dots
    outline       one of OUTLINES: none / dark
    blur, noise   degradations (0 for clean renders; used for scorer training pairs)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from pixpref.errors import unknown_name

SHAPES = ("circle", "square", "triangle", "star", "cross")
# colour name -> hue in degrees (gaps of at least 30 degrees so the hue detector is unambiguous)
COLOURS = {
    "red": 0.0,
    "orange": 30.0,
    "yellow": 58.0,
    "green": 120.0,
    "cyan": 182.0,
    "blue": 228.0,
    "purple": 272.0,
    "magenta": 315.0,
}
SHADES = ("pastel", "vivid", "dark")
TEXTURES = ("solid", "stripes", "dots")
OUTLINES = ("none", "dark")

SIZE_RANGE = (0.12, 0.30)
POS_RANGE = (0.32, 0.68)
BG_SATURATION = 0.15

# shape-colour combinations never shown in training: the generalisation test set
HELD_OUT_COMBOS = frozenset(
    {("red", "star"), ("blue", "triangle"), ("green", "cross"), ("yellow", "circle"), ("purple", "square")}
)

PROMPT_TEMPLATES = (
    "a {colour} {shape}",
    "a photo of a {colour} {shape}",
    "an image of a {colour} {shape}",
    "a {shape} in {colour}",
    "a picture of one {colour} {shape}",
)


def check_shape(shape: str) -> str:
    if shape not in SHAPES:
        raise unknown_name("shape", shape, SHAPES)
    return shape


def check_colour(colour: str) -> str:
    if colour not in COLOURS:
        raise unknown_name("colour", colour, COLOURS)
    return colour


def content_combos(split: str = "seen") -> list[tuple[str, str]]:
    """(colour, shape) combinations: ``seen`` (trainable), ``held_out`` or ``all``."""
    combos = [(c, s) for s in SHAPES for c in COLOURS]
    if split == "all":
        return combos
    if split == "seen":
        return [cs for cs in combos if cs not in HELD_OUT_COMBOS]
    if split == "held_out":
        return [cs for cs in combos if cs in HELD_OUT_COMBOS]
    raise unknown_name("combination split", split, ("seen", "held_out", "all"))


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: float = 0.22
    cx: float = 0.5
    cy: float = 0.5
    bg_lightness: float = 0.5
    bg_hue: float = 0.0
    shade: str = "vivid"
    texture: str = "solid"
    outline: str = "none"
    blur: float = 0.0
    noise: float = 0.0

    def __post_init__(self):
        check_shape(self.shape)
        check_colour(self.colour)
        if self.shade not in SHADES:
            raise unknown_name("shade", self.shade, SHADES)
        if self.texture not in TEXTURES:
            raise unknown_name("texture", self.texture, TEXTURES)
        if self.outline not in OUTLINES:
            raise unknown_name("outline", self.outline, OUTLINES)

    def prompt(self, template: int = 0) -> str:
        """The content prompt (shape and colour only)."""
        return PROMPT_TEMPLATES[template % len(PROMPT_TEMPLATES)].format(colour=self.colour, shape=self.shape)

    def replace(self, **changes) -> Scene:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def sample_scene(
    rng: np.random.Generator,
    shape: str | None = None,
    colour: str | None = None,
    combos: str = "seen",
) -> Scene:
    """Sample a scene: content from ``combos`` unless given, style uniformly from its ranges."""
    if shape is None or colour is None:
        pool = content_combos(combos)
        if shape is not None:
            pool = [cs for cs in pool if cs[1] == check_shape(shape)]
        if colour is not None:
            pool = [cs for cs in pool if cs[0] == check_colour(colour)]
        if not pool:
            pool = [(colour or "red", shape or "circle")]
        colour, shape = pool[rng.integers(len(pool))]
    return Scene(
        shape=shape,
        colour=colour,
        size=float(rng.uniform(*SIZE_RANGE)),
        cx=float(rng.uniform(*POS_RANGE)),
        cy=float(rng.uniform(*POS_RANGE)),
        bg_lightness=float(rng.uniform(0.0, 1.0)),
        bg_hue=float(rng.uniform(0.0, 1.0)),
        shade=SHADES[rng.integers(len(SHADES))],
        texture=TEXTURES[rng.integers(len(TEXTURES))],
        outline=OUTLINES[rng.integers(len(OUTLINES))],
    )


# ---- style words, used in captions for the VLM and CLIP -----------------------------------------------

HUE_NAMES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta")


def hue_name(hue: float) -> str:
    """Nearest colour name for a hue in [0, 1)."""
    deg = (hue % 1.0) * 360.0
    best = min(COLOURS, key=lambda n: min(abs(deg - COLOURS[n]), 360 - abs(deg - COLOURS[n])))
    return best


def size_word(size: float) -> str:
    lo, hi = SIZE_RANGE
    f = (size - lo) / (hi - lo)
    return "small" if f < 1 / 3 else ("medium" if f < 2 / 3 else "large")


def position_words(cx: float, cy: float) -> tuple[str, str]:
    lo, hi = POS_RANGE
    fx, fy = (cx - lo) / (hi - lo), (cy - lo) / (hi - lo)
    horiz = "left" if fx < 1 / 3 else ("centre" if fx < 2 / 3 else "right")
    vert = "top" if fy < 1 / 3 else ("middle" if fy < 2 / 3 else "bottom")
    return horiz, vert


def lightness_word(lightness: float) -> str:
    return "dark" if lightness < 1 / 3 else ("grey" if lightness < 2 / 3 else "light")


def style_words(scene: Scene) -> dict[str, str]:
    """Discrete words for each style factor (the VLM/CLIP caption vocabulary)."""
    horiz, vert = position_words(scene.cx, scene.cy)
    return {
        "size": size_word(scene.size),
        "horizontal": horiz,
        "vertical": vert,
        "background": lightness_word(scene.bg_lightness),
        "shade": scene.shade,
        "texture": scene.texture,
        "outline": "outlined" if scene.outline == "dark" else "plain",
    }


def caption(scene: Scene) -> str:
    """A caption naming content *and* style, e.g.
    'a large pastel red star, striped, outlined, at the top left, on a dark background'."""
    w = style_words(scene)
    texture = {"solid": "solid", "stripes": "striped", "dots": "dotted"}[scene.texture]
    return (
        f"a {w['size']} {w['shade']} {scene.colour} {scene.shape}, {texture}, {w['outline']}, "
        f"at the {w['vertical']} {w['horizontal']}, on a {w['background']} background"
    )
