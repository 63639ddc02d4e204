"""Image and label files to tensors: RGB ``uint8`` 3 x H x W images, ``uint8`` H x W label maps.

Decoding goes through ``torchvision.io.decode_image`` (libjpeg-turbo / libpng, no PIL object)
with ``ImageReadMode.RGB``, so grayscale, palette, RGBA and CMYK files all arrive as 3-channel
RGB; 16-bit PNGs are reduced to 8 bits; formats it cannot read (BMP, TIFF, ...) fall back to PIL.
A file neither can decode raises :class:`~ctxlit.errors.DatasetError` naming the file.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

from ctxlit.errors import DatasetError

try:  # torchvision >= 0.29 deprecates its image codecs in favour of torchcodec; still the fastest here
    from torchvision.io import ImageReadMode, decode_image

    warnings.filterwarnings(
        "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
    )
except ImportError:  # pragma: no cover - a future torchvision without torchvision.io image codecs
    decode_image = None
    ImageReadMode = None


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _undecodable(path: str, error: Exception) -> DatasetError:
    reason = str(error).replace(f"'{path}'", "").strip() or type(error).__name__
    return DatasetError(f"cannot decode image file {path}: {reason} (corrupt, truncated or not an image)")


def decode_rgb(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to a ``3 x H x W`` uint8 RGB tensor; ``DatasetError`` names a bad file.

    The EXIF orientation tag is applied (phone photos come out upright).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DatasetError(f"cannot read image file {path}: {error.strerror or error}") from error
    if not data:
        raise DatasetError(f"image file {path} is empty (0 bytes)")
    if decode_image is not None:
        try:
            image = decode_image(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB, apply_exif_orientation=True
            )
        except RuntimeError:
            pass  # unsupported format or a damaged file: PIL decides below and gives the clearer reason
        else:
            if image.dtype == torch.uint16:  # 16-bit PNG
                image = (image.to(torch.int32) >> 8).to(torch.uint8)
            return image
    try:
        with Image.open(path) as opened:
            if opened.mode in {"I;16", "I;16B", "I;16L", "I"}:  # 16/32-bit grayscale: keep the high byte
                opened = Image.fromarray((np.asarray(opened, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
            return _pil_to_tensor(ImageOps.exif_transpose(opened).convert("RGB"))
    except _PIL_ERRORS as error:
        raise _undecodable(path, error) from error


#: how a whole file of a format ends, looked for in its last :data:`TAIL_BYTES` (JPEG's EOI
#: marker may be followed by a camera's trailer, PNG's IEND chunk ends the file)
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}
TAIL_BYTES = 4096


def check_image_header(path: str | os.PathLike) -> None:
    """Identify the image file's format without decoding its pixels (0.1 ms against 2 ms for a
    500x375 JPEG): an empty file, random bytes or another format raise ``DatasetError`` worded
    as :func:`decode_rgb` words it. A JPEG or PNG whose end marker is missing from its tail (a
    truncated file) is decoded whole, which names it if it cannot be decoded."""
    path = os.fspath(path)
    try:
        empty = os.path.getsize(path) == 0
        if not empty:
            with Image.open(path) as opened:
                marker = END_MARKERS.get(opened.format)
    except _PIL_ERRORS as error:
        raise _undecodable(path, error) from error
    if empty:
        raise DatasetError(f"image file {path} is empty (0 bytes)")
    if marker is not None and marker not in _tail(path):
        decode_rgb(path)


def _tail(path: str) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - TAIL_BYTES))
        return handle.read()


def decode_label(path: str | os.PathLike) -> torch.Tensor:
    """Decode a single-channel label PNG to a ``H x W`` uint8 tensor; ``DatasetError`` names a bad file.

    libpng through ``decode_image`` for 8-bit grayscale (the Cityscapes case, ~3x faster than
    PIL); PIL for everything else (palette indices, 16-bit, and the error message).
    """
    path = os.fspath(path)
    if decode_image is not None:
        try:
            label = decode_image(torch.from_numpy(np.fromfile(path, dtype=np.uint8)), mode=ImageReadMode.UNCHANGED)
        except (RuntimeError, OSError, ValueError):
            pass
        else:
            if label.shape[0] == 1 and label.dtype == torch.uint8:
                return label[0]
    try:
        with Image.open(path) as opened:
            if opened.mode not in {"L", "P", "I", "I;16", "1"}:
                raise DatasetError(
                    f"label file {path} has mode {opened.mode}; expected a single-channel PNG of label ids"
                )
            array = np.asarray(opened)
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise DatasetError(f"cannot decode label file {path}: {error} (corrupt, truncated or not a PNG)") from error
    if array.dtype != np.uint8:
        array = array.clip(0, 255).astype(np.uint8)
    return torch.from_numpy(array.copy())
