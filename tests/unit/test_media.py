import struct

import pytest

from pipeline.limits import media
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
    assert media.pdf_pages(b"not a pdf /Type /Page") is None


# -- issue 23, finding 5: pages from the page tree, not from a regex ------------


def object_stream_pdf(pages: int, *, count: int | None = None, decoy: bool = True) -> bytes:
    """A PDF 1.5 whose page tree and pages live in a compressed object stream,
    indexed by a cross-reference stream (as Acrobat, Word and qpdf write them),
    with a decoy "/Type /Page" in a comment. `count`: the /Count the tree claims."""
    import zlib

    kids = [3 + i for i in range(pages)]
    inner = {
        2: f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] "
        f"/Count {pages if count is None else count} >>",
        **{k: "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>" for k in kids},
    }
    body, offsets = b"", []
    for text in inner.values():
        offsets.append(len(body))
        body += text.encode() + b"\n"
    header = " ".join(f"{num} {off}" for num, off in zip(inner, offsets, strict=True)).encode()
    header += b"\n"
    objstm_num, xref_num = 3 + pages, 4 + pages
    packed = zlib.compress(header + body)
    out = b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n"
    if decoy:
        out += b"% /Type /Page\n"
    where: dict[int, int] = {}
    where[1] = len(out)
    out += b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    where[objstm_num] = len(out)
    out += (
        (
            f"{objstm_num} 0 obj\n<< /Type /ObjStm /N {len(inner)} /First {len(header)} "
            f"/Filter /FlateDecode /Length {len(packed)} >>\nstream\n"
        ).encode()
        + packed
        + b"\nendstream\nendobj\n"
    )
    where[xref_num] = len(out)
    rows = [bytes([0]) + (0).to_bytes(4, "big") + (65535).to_bytes(2, "big")]
    for num in range(1, xref_num + 1):
        if num in where:
            rows.append(bytes([1]) + where[num].to_bytes(4, "big") + (0).to_bytes(2, "big"))
        else:
            index = list(inner).index(num)
            rows.append(bytes([2]) + objstm_num.to_bytes(4, "big") + index.to_bytes(2, "big"))
    xref = zlib.compress(b"".join(rows))
    out += (
        (
            f"{xref_num} 0 obj\n<< /Type /XRef /Size {xref_num + 1} /W [1 4 2] /Root 1 0 R "
            f"/Filter /FlateDecode /Length {len(xref)} >>\nstream\n"
        ).encode()
        + xref
        + b"\nendstream\nendobj\n"
    )
    return out + f"startxref\n{where[xref_num]}\n%%EOF\n".encode()


def test_pages_in_an_object_stream_are_counted_and_a_decoy_is_not() -> None:
    # Before: the regex saw one page (the decoy comment), and the budget bound
    # reserved 1 x the per-page maximum for a 40-page PDF.
    pdf = object_stream_pdf(40)
    assert pdf.count(b"/Type /Page") == 1  # what the regex saw
    assert media.pdf_pages(pdf) == 40


def test_a_page_count_that_is_not_certain_is_none() -> None:
    assert media.pdf_pages(object_stream_pdf(3, count=1)) is None  # /Count lies
    assert media.pdf_pages(object_stream_pdf(3)[:-40]) is None  # damaged: no startxref
    assert media.pdf_pages(b"%PDF-1.4\n% /Type /Page\n%%EOF") is None
    assert media.pdf_pages(b"not a pdf") is None


def test_the_budget_bound_reserves_every_page_or_the_worst_case() -> None:
    import base64

    from pipeline.limits import tokens

    def bound(pdf: bytes) -> int:
        data = base64.b64encode(pdf).decode()
        source = {"type": "base64", "media_type": "application/pdf", "data": data}
        block = {"type": "document", "source": source}
        return tokens.bound_block(block)

    assert bound(object_stream_pdf(40)) >= 40 * tokens.PDF_PAGE_TOKENS_MAX
    assert bound(object_stream_pdf(40, count=2)) >= tokens.CONTEXT_WINDOW_MAX
