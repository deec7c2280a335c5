"""Checks on what a request to `mobilenets face-embedding serve` brings: uploaded photos and names.

Every refusal is a `RequestError` carrying its HTTP status and a message that names the file and
the rule it broke, so the page (and a script) can show it as is:

  * the file name must be a plain name (no `/`, `\\`, leading `.`, control characters): the server
    never uses it for anything but messages, but a client that sends `../x.jpg` is refused outright;
  * the file must not be empty or over the size limit (413), must decode, in full, as one of
    `UPLOAD_FORMATS` (Pillow's other plugins, EPS/PDF-style ones included, are never tried), must
    not be a decompression bomb (pixel count checked before decoding), and must be face-shaped
    (`check_face_image`: the rule `mobilenets face-embedding search` applies to its query).
"""

from __future__ import annotations

import io
import unicodedata
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.face_embedding.inference import NotAFaceImageError, check_face_image

UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}  # MPO: phone JPEGs
MAX_UPLOAD_PIXELS = 40_000_000
MAX_NAME_LENGTH = 80


class RequestError(ValueError):
    """A request the server refuses; `status` is the HTTP code, the message says what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Photo:
    """An upload that passed every check: its bytes (kept on enrolment), RGB pixels and file extension."""

    data: bytes
    image: np.ndarray
    extension: str


def check_file_name(filename: str | None) -> str:
    name = filename or "upload"
    if any(sep in name for sep in "/\\") or name.startswith(".") or not name.isprintable():
        raise RequestError(400, f"file name {name!r} must be a plain file name, not a path")
    return name


def decode_upload(filename: str | None, data: bytes, max_bytes: int) -> Photo:
    """Check one uploaded file (`data` may be cut at `max_bytes + 1`); raises `RequestError` (4xx)."""
    name = check_file_name(filename)
    if not data:
        raise RequestError(400, f"{name}: empty file (0 bytes)")
    if len(data) > max_bytes:
        raise RequestError(413, f"{name}: larger than the upload limit of {max_bytes} bytes")
    kinds = "/".join(UPLOAD_FORMATS)
    try:
        with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as img:
            if img.width * img.height > MAX_UPLOAD_PIXELS:
                size = f"{img.width}x{img.height} px"
                raise RequestError(413, f"{name}: {size} is over the limit of {MAX_UPLOAD_PIXELS} pixels")
            img.load()  # decodes every byte: a truncated file fails here, not later
            photo = Photo(data, np.array(img.convert("RGB")), EXTENSIONS.get(img.format, "img"))
    except UnidentifiedImageError:
        raise RequestError(422, f"{name}: not a {kinds} image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, RequestError):
            raise
        raise RequestError(422, f"{name}: truncated or corrupt image data ({err})") from None
    try:
        check_face_image(photo.image, name)
    except NotAFaceImageError as err:
        raise RequestError(422, str(err)) from None
    return photo


def clean_name(name: str) -> str:
    """An identity name as typed, trimmed; empty, overlong and control-character names are refused."""
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise RequestError(422, f"a name must have 1 to {MAX_NAME_LENGTH} characters, got {len(name)}")
    if any(unicodedata.category(char).startswith("C") for char in name):
        raise RequestError(422, f"name {name!r} contains control characters")
    return name
