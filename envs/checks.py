"""Up-front checks of user settings: every failure is one ``UserError`` line that names the flag.

Commands call these before any work starts, so a bad value never costs a collection or a
training epoch, and never surfaces later as a library's traceback (pycma, for one, needs a
population of at least 4 and says so only after the search has been built).
"""

from __future__ import annotations

import math
from pathlib import Path

from envs.errors import UserError


def flag(name: str) -> str:
    """``vae_epochs`` -> ``--vae-epochs``: how a setting is spelled on the command line."""
    return "--" + name.replace("_", "-")


def at_least(name: str, value: float, low: float, why: str = "") -> None:
    """``value >= low`` (and not NaN)."""
    if not value >= low:
        raise UserError(f"{flag(name)} must be at least {low:g}, got {value:g}" + (f" ({why})" if why else ""))


def positive(name: str, value: float, why: str = "") -> None:
    """``value > 0``, finite."""
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"{flag(name)} must be a positive number, got {value:g}" + (f" ({why})" if why else ""))


def in_range(name: str, value: float, low: float, high: float) -> None:
    """``low <= value <= high``."""
    if not low <= value <= high:
        raise UserError(f"{flag(name)} must be in [{low:g}, {high:g}], got {value:g}")


def one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{flag(name)} {value!r} is not one of: {', '.join(choices)}")


def directory_to_write(name: str, path: Path | None) -> None:
    """A directory a command creates or resumes: it may be absent, but must not be a file."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag(name)} {path} is a file, not a directory: name a directory")


def existing_directory(name: str, path: Path, what: str) -> None:
    """A directory a command reads, e.g. a dataset or a trained run."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{flag(name)} {path} does not exist: it should be {what}")
    if not path.is_dir():
        raise UserError(f"{flag(name)} {path} is a file, not a directory: it should be {what}")


def file_to_write(name: str, path: Path | None) -> None:
    """A file a command writes: absent or a file, and its parent not a file."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag(name)} {path} is a directory: name a file")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{flag(name)} {path}: {parent} is a file, not a directory")
