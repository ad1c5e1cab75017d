"""Scorer dimensions and their condition texts.

Each text dimension of the scorer is described by a *condition*: a short list of words naming what the
dimension looks at. The scorer compares every prompt token with the condition tokens and keeps the prompt
tokens that are relevant to the dimension (MPS, Zhang et al. 2024). The word lists below are our own.

The ``personal`` dimension has no condition text: its condition tokens are the user-embedding tokens
produced by the user encoder, projected into the scorer's width.
"""

from __future__ import annotations

from pixpref.errors import PixprefError, unknown_name

#: the dimension conditioned on a user embedding instead of a condition text
PERSONAL = "personal"

#: dimension -> condition words (the words that define what the dimension attends to)
CONDITION_WORDS: dict[str, tuple[str, ...]] = {
    "aesthetics": tuple("light colour tone contrast composition style mood harmony beauty".split()),
    "alignment": tuple("object shape colour quantity number attributes position location size".split()),
    "detail": tuple("clarity texture sharpness noise edges blur pattern outline artifacts".split()),
}
# "overall" looks at everything the other text dimensions look at (order kept, duplicates dropped)
CONDITION_WORDS["overall"] = tuple(dict.fromkeys(w for words in CONDITION_WORDS.values() for w in words))

#: text-conditioned dimensions, in display order
TEXT_DIMENSIONS: tuple[str, ...] = ("aesthetics", "alignment", "detail", "overall")
#: every dimension the scorer knows, in display order
ALL_DIMENSIONS: tuple[str, ...] = (*TEXT_DIMENSIONS, PERSONAL)


def condition_text(words: tuple[str, ...] | list[str], separator: str = ", ") -> str:
    """Join condition words into the text fed to the CLIP text tower ("light, colour, tone")."""
    if not words:
        raise PixprefError("a condition needs at least one word")
    return separator.join(words)


def check_dimensions(names: list[str] | tuple[str, ...], valid: tuple[str, ...] | list[str]) -> list[str]:
    """Return ``names`` as a list after checking each is in ``valid`` (no duplicates, not empty)."""
    names = list(names)
    if not names:
        raise PixprefError(f"no dimensions given; valid options: {', '.join(valid)}")
    for name in names:
        if name not in valid:
            raise unknown_name("dimension", name, valid)
    if len(set(names)) != len(names):
        raise PixprefError(f"dimension listed twice in {names}")
    return names
