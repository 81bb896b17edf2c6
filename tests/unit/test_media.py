import struct

import pytest

from pipeline import media
from tests import corpus


def _gif(w: int, h: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", w, h) + b"\x00" * 8


def _webp_vp8x(w: int, h: int) -> bytes:
    body = b"VP8X" + b"\x0a\x00\x00\x00" + b"\x00" * 4 + (w - 1).to_bytes(3, "little")
    return b"RIFF\x00\x00\x00\x00WEBP" + body + (h - 1).to_bytes(3, "little")


def _webp_vp8l(w: int, h: int) -> bytes:
    bits = (w - 1) | ((h - 1) << 14)
    return b"RIFF\x00\x00\x00\x00WEBPVP8L\x00\x00\x00\x00\x2f" + bits.to_bytes(4, "little")


@pytest.mark.parametrize(
    ("data", "kind", "size"),
    [
        (corpus.png(640, 480), "image/png", (640, 480)),
        (corpus.jpeg(4032, 3024), "image/jpeg", (4032, 3024)),
        (_gif(320, 200), "image/gif", (320, 200)),
        (_webp_vp8x(1920, 1080), "image/webp", (1920, 1080)),
        (_webp_vp8l(100, 50), "image/webp", (100, 50)),
    ],
)
def test_image_type_and_size_come_from_the_header(
    data: bytes, kind: str, size: tuple[int, int]
) -> None:
    assert media.sniff_image(data) == kind
    assert media.image_size(data) == size


def test_garbage_is_no_image() -> None:
    assert media.sniff_image(b"BM....") is None
    assert media.image_size(b"\xff\xd8\xff\xe0\x00") is None  # a JPEG cut short


def test_pdf_pages_are_counted_and_pages_trees_are_not() -> None:
    assert media.pdf_pages(corpus.pdf(3)) == 3
    assert media.pdf_pages(corpus.pdf(1)) == 1
    assert media.pdf_pages(b"not a pdf /Type /Page") == 0
