"""Files written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, text: str | bytes) -> None:
    """All of the file or none of it: written to a temp file beside its place (the same
    filesystem), then renamed over it, so a reader or a kill never sees half of it. ``text``
    is written as text, or byte for byte when it is ``bytes`` (an encoded image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; these files are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unwritable_reason(folder: str | os.PathLike) -> str | None:
    """Why no file can be created in ``folder`` (or in the folders that would be made for it),
    or None when one can: its nearest existing ancestor must be a folder in which a file can be
    created. Tried, not read from the mode bits: root may write where the bits forbid it, but
    not on a read-only filesystem."""
    ancestor = Path(folder).absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        return f"{ancestor} is not writable ({err.strerror or err})"
    return None
