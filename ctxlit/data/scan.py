"""Dataset folders on disk: class folders, their image files, and the files that cannot be read.

Every check raises :class:`~ctxlit.errors.DatasetError` naming the path and the expected layout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ctxlit.data.decode import check_image_header, decode_rgb
from ctxlit.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Files that operating systems and tools drop into folders; never reported as "not an image".
_JUNK_NAMES = {"thumbs.db", "desktop.ini", "readme", "readme.txt", "readme.md", "license", "license.txt"}


def _is_junk(name: str) -> bool:
    return name.startswith(".") or name.lower() in _JUNK_NAMES


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """All files below ``directory`` (sorted, recursive, links followed): (images, non-image files)."""
    images: list[Path] = []
    others: list[Path] = []
    for current, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if _is_junk(name):
                continue
            (images if is_image_file(name) else others).append(Path(current) / name)
    return images, others


def require_dir(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what} {path} does not exist; expected layout:\n{layout}")
    if not path.is_dir():
        raise DatasetError(f"{what} {path} is not a directory; expected layout:\n{layout}")
    return path


def class_folders(directory: Path, layout: str) -> list[str]:
    """Sorted names of the class sub-folders of ``directory``; ``DatasetError`` when there are none."""
    require_dir(directory, "dataset folder", layout)
    names = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    if not names:
        loose = sorted(e.name for e in os.scandir(directory) if e.is_file() and not _is_junk(e.name))
        hint = f" (it holds {len(loose)} loose files, e.g. {loose[0]!r}, but images must sit in class folders)" if loose else ""
        raise DatasetError(f"{directory} has no class folders{hint}; expected layout:\n{layout}")
    return names


def scan_class_folders(
    directory: Path, classes: Sequence[str], layout: str, skip_unreadable: bool = False, skipped: list | None = None
) -> list[list[Path]]:
    """Image paths per class (in ``classes`` order, a class folder missing here counts as empty).

    A class folder without images, or a file with a non-image extension, raises ``DatasetError``;
    with ``skip_unreadable`` non-image files are appended to ``skipped`` as ``(path, reason)``.
    """
    per_class: list[list[Path]] = []
    for name in classes:
        folder = directory / name
        if not folder.is_dir():
            per_class.append([])
            continue
        images, others = list_files(folder)
        for other in others:
            reason = f"not an image file (accepted extensions: {', '.join(IMAGE_EXTENSIONS)})"
            if not skip_unreadable:
                raise DatasetError(f"{other}: {reason}; remove it or pass skip_unreadable=True")
            if skipped is not None:
                skipped.append((other, reason))
        if not images:
            raise DatasetError(f"class folder {folder} contains no images ({', '.join(IMAGE_EXTENSIONS)}); expected layout:\n{layout}")
        per_class.append(images)
    return per_class


def find_unreadable(paths: Sequence[Path], threads: int | None = None, header_only: bool = False) -> list[tuple[Path, str]]:
    """Decode every file (threaded), or with ``header_only`` only identify it
    (:func:`check_image_header`); return ``(path, reason)`` for each one that fails."""
    read = check_image_header if header_only else decode_rgb

    def check(path: Path) -> tuple[Path, str] | None:
        try:
            read(path)
        except DatasetError as error:
            return path, str(error)
        return None

    with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
        return [r for r in pool.map(check, paths) if r is not None]


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


@rank_zero_only
def report(message: str) -> None:
    """Print a data-module message once (rank 0 only under DDP)."""
    print(message, flush=True)


def describe_skipped(skipped: Sequence[tuple[Path, str]], limit: int = 10) -> str:
    lines = [f"skipped {len(skipped)} unreadable file(s):"]
    lines += [f"  {reason if str(path) in reason else f'{path}: {reason}'}" for path, reason in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more")
    return "\n".join(lines)
