"""What token counting needs to know about images and PDFs, read from their bytes.

Image dimensions come from the file header (PNG, JPEG, GIF, WebP), without decoding
pixels; a PDF's page count from its page objects. Both the worker (to count and
bound a request's tokens) and the simulator (to bill them) use these, so the
numbers the scheduler plans with are the numbers "Claude" charges.
"""

from __future__ import annotations

import base64
import functools
import logging
import struct

#: The media types the Messages API accepts for images.
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def sniff_image(data: bytes) -> str | None:
    """The media type an image's bytes really are, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image header, or None if it cannot be read."""
    kind = sniff_image(data)
    try:
        if kind == "image/png" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return int(width), int(height)
        if kind == "image/gif":
            width, height = struct.unpack("<HH", data[6:10])
            return int(width), int(height)
        if kind == "image/webp":
            return _webp_size(data)
        if kind == "image/jpeg":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    if chunk == b"VP8L":
        b = data[21:25]
        bits = int.from_bytes(b, "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


#: JPEG start-of-frame markers (baseline, progressive, ...), which carry the size.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(width), int(height)
        i += 2 + length
    return None


def b64_prefix(data: str, chars: int = 262_144) -> bytes:
    """Decode the start of a base64 string (headers live there); b'' if it is not base64."""
    head = data[: chars - chars % 4]
    try:
        return base64.b64decode(head, validate=True)
    except ValueError:
        return b""


def is_pdf(data: bytes) -> bool:
    return data.startswith(b"%PDF-")


# pypdf warns about every damaged PDF; here a damaged PDF is an answer (None)
logging.getLogger("pypdf").setLevel(logging.ERROR)

#: Pages beyond which a count is not believed (Claude's PDF support stops at
#: 100 pages per request; a tree claiming more is at best irrelevant).
MAX_PDF_PAGES = 10_000


@functools.lru_cache(maxsize=32)  # the estimate and the bound both ask
def pdf_pages(data: bytes) -> int | None:
    """The pages of a PDF, from its page tree, or None when that number cannot be
    established with certainty: not a PDF, encrypted, damaged, or a tree whose
    /Count disagrees with its leaves. Callers reserve the worst case for None.

    A count of "/Type /Page" in the raw bytes (what this was) sees no page kept
    in a compressed object stream and counts every decoy (a comment will do).
    pypdf reads the cross-reference table or stream, object streams included,
    and walks the tree from the catalog, as a viewer (and Claude) does."""
    if not is_pdf(data):
        return None
    import io

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        # strict: a PDF that needs repairing has no certain page count
        reader = PdfReader(io.BytesIO(data), strict=True)
        if reader.is_encrypted:
            return None
        declared = reader.trailer["/Root"]["/Pages"]["/Count"]  # type: ignore[index]
        leaves = len(reader.pages)
    except (PyPdfError, ValueError, TypeError, KeyError, AttributeError, IndexError,
            RecursionError, OverflowError, AssertionError, LookupError,
            UnicodeError, EOFError, OSError):  # fmt: skip
        return None
    if not isinstance(declared, int) or declared != leaves or not 0 < leaves <= MAX_PDF_PAGES:
        return None
    return leaves
