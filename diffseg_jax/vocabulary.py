"""The words every layer shares: the two error kinds users see, and the sequences and how they are spelt.

It sits on the lowest floor (it imports nothing of the project), so the data readers, the configs, the
methods and the programs all name sequences and report bad input the same way.
"""

from __future__ import annotations

import re


class ConfigError(ValueError):
    """A config that cannot run (unknown task, method, preset or value); the message is one line."""


class DataError(ValueError):
    """Bad data on disk; the message is one line naming the file (or folder) and the problem."""


MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")  # the channel order of every image

# How datasets spell each sequence (lower case, letters and digits only).
SEQUENCE_SPELLINGS: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1w", "t1n", "native", "t1native"),
    "t1ce": ("t1ce", "t1c", "t1gd", "t1post", "t1contrast", "t1gad", "t1km"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2flair", "t2f"),
}


def sequence_name(text: str) -> str | None:
    """The project's name (t1, t1ce, t2, flair) of a sequence as datasets spell it (T1w, t1gd, FLAIR, ...)."""
    key = re.sub(r"[^a-z0-9]", "", text.lower())
    return next((name for name, spellings in SEQUENCE_SPELLINGS.items() if key in spellings), None)


def parse_available(text: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """'t1,flair' (the command-line form) or a sequence of names -> names in MODALITIES order."""
    if text is None or text == "":
        return MODALITIES
    names = [s.strip().lower() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [n for n in names if n not in MODALITIES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"available={text!r}: expected distinct names from {', '.join(MODALITIES)}")
    return tuple(m for m in MODALITIES if m in names)
