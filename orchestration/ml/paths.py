"""Containment of local files: a name from a web form may only reach files under allowed roots.

Every check resolves real paths (symlinks and `..` included), so a symlink placed inside a root
that points outside it is refused like the outside path itself, before anything is read, and no
error ever quotes what such a file holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def under_roots(path: Path, roots: Sequence[Path]) -> bool:
    """True when `path` (symlinks resolved) lies inside one of `roots`."""
    real = Path(path).resolve()
    return any(real.is_relative_to(Path(root).resolve()) for root in roots)


def links_outside(folder: Path, roots: Sequence[Path]) -> list[str]:
    """Names of the entries of `folder` (recursively) whose real path leaves every root."""
    found = []
    for entry in sorted(Path(folder).rglob("*")):
        if entry.is_symlink() and not under_roots(entry, roots):
            found.append(str(entry.relative_to(folder)))
    return found


def path_problem(err: OSError | ValueError) -> str:
    """Why a path could not be used, without the raw OSError text ("[Errno 36] ...")."""
    text = str(err)
    if "null byte" in text or "NUL" in text:
        return "it contains a NUL character"
    if getattr(err, "errno", None) == 36:  # ENAMETOOLONG
        return "a file or folder name in it is too long"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return "it is not a valid path"
