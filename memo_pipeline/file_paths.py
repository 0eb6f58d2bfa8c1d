"""Path rules shared by every command that writes files next to its inputs."""
from __future__ import annotations

from pathlib import Path


def same_file(a: Path, b: Path) -> bool:
    """Same path, or the same file reached through a symlink or a hard link: an output that is an
    input under another name would still destroy it."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False
