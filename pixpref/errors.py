"""User-facing errors.

Every error a user can cause (bad input, unknown name, misspelt key) is a :class:`PixprefError` with a
message that names the problem and, where there are any, the valid options. The CLI prints it as one line
and exits with code 2.
"""

from __future__ import annotations

from collections.abc import Iterable


class PixprefError(ValueError):
    """An error caused by user input; its message is meant to be shown as is."""


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> PixprefError:
    """Build the standard 'unknown X' error listing the valid options."""
    options = ", ".join(sorted(str(v) for v in valid))
    return PixprefError(f"unknown {kind} {name!r}; valid options: {options}")
