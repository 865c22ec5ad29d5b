"""Tests for imageproc.engine.renditions: real images, decoded back at their sizes."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from imageproc.engine.compress import CompressOptions, ImageRejected, compress, configure_pillow, decode_source
from imageproc.engine.renditions import draft_size, fitted, render, validate_sizes
from tests.graphics import logo
from tests.test_compress import decode, encode, photo

ORIENTATION = 0x0112


@pytest.fixture(autouse=True)
def _pillow() -> None:
    configure_pillow()


def displayed(data: bytes) -> Image.Image:
    im = ImageOps.exif_transpose(decode(data))
    assert im is not None
    return im


def test_each_size_fits_its_box_and_a_larger_box_gets_the_source_as_compress_makes_it() -> None:
    data = encode(photo((1200, 900)), "JPEG", quality=92)
    renditions = render(data, [200, 1600, 800, 2000])
    assert [r.size for r in renditions] == [2000, 1600, 800, 200]
    own = compress(data)
    for r in renditions[:2]:
        assert not r.resized
        assert r.result.data == own.data
        assert decode(r.result.data).size == (1200, 900)
    assert renditions[0].result is renditions[1].result  # encoded once, shared
    assert [decode(r.result.data).size for r in renditions[2:]] == [(800, 600), (200, 150)]
    assert [(r.result.width, r.result.height) for r in renditions[2:]] == [(800, 600), (200, 150)]
    assert all(r.result.output_format == "jpeg" and r.resized for r in renditions[2:])


def test_a_large_jpeg_is_decoded_at_the_smallest_dct_scale_that_covers_the_largest_size() -> None:
    data = encode(photo((2400, 1800)), "JPEG", quality=90)
    # 1/8 scale covers a 200 px box; 1/2 covers 1000 px; 1/1 is needed for 1600.
    for box, decoded in ((200, (300, 225)), (1000, (1200, 900)), (1600, (2400, 1800))):
        source = decode_source(data, CompressOptions(), draft=lambda size, box=box: draft_size(size, box))
        assert source.pixels.size == decoded
        assert source.resized == (decoded != (2400, 1800))
    renditions = render(data, [1000, 200])
    assert [decode(r.result.data).size for r in renditions] == [(1000, 750), (200, 150)]


def test_a_draft_decode_whose_scale_does_not_divide_the_size_is_not_shifted() -> None:
    # 2403 px at 1/4 is 600.75 px, decoded as 601: resized as if 601 px were the picture,
    # the stripes would drift by most of a stripe towards the right edge.
    stripes = Image.new("L", (2403, 1203), 255)
    draw = ImageDraw.Draw(stripes)
    for x in range(0, 2403, 24):
        draw.rectangle((x, 0, x + 11, 1203), fill=0)
    data = encode(stripes.convert("RGB"), "JPEG", quality=95)
    full = decode(data).convert("L")
    for box in (600, 1000):
        (r,) = render(data, [box], CompressOptions(quality=95))
        got = np.asarray(decode(r.result.data).convert("L"), dtype=np.float32)
        reference = full.resize((got.shape[1], got.shape[0]), Image.Resampling.LANCZOS)
        error = np.abs(got - np.asarray(reference, dtype=np.float32))
        assert error[:, -200:].mean() < 5, box  # 20 when the draft's extent is ignored


def test_a_drafted_source_never_returns_the_input_bytes_as_a_rendition() -> None:
    # 1/2 scale of 1600x1200 is exactly the 800 px box: still a rendition, not the original.
    data = encode(photo((1600, 1200)), "JPEG", quality=95)
    (r,) = render(data, [800])
    assert r.resized and r.result.candidate != "original"
    assert decode(r.result.data).size == (800, 600)
    assert len(r.result.data) < len(data)


def test_orientation_is_honoured_in_every_rendition_and_format() -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored landscape, displayed portrait
    data = encode(photo((1200, 800)), "JPEG", quality=90, exif=exif.tobytes())
    for fmt in ("jpeg", "webp"):
        renditions = render(data, [600, 150], CompressOptions(output_format=fmt))
        assert [displayed(r.result.data).size for r in renditions] == [(400, 600), (100, 150)]
        assert [(r.result.width, r.result.height) for r in renditions] == [(400, 600), (100, 150)]


def test_transparency_survives_the_resizing_into_webp() -> None:
    im = logo(1024, 512).convert("RGBA")
    im.putalpha(Image.new("L", im.size, 0))
    im.paste((200, 30, 30, 255), (256, 128, 768, 384))
    data = encode(im, "PNG")
    (big, small) = render(data, [512, 64], CompressOptions(output_format="webp"))
    for r, size in ((big, (512, 256)), (small, (64, 32))):
        out = decode(r.result.data)
        assert out.size == size and out.mode == "RGBA"
        assert out.getpixel((1, 1))[3] == 0  # type: ignore[index]
        assert out.getpixel((size[0] // 2, size[1] // 2))[3] == 255  # type: ignore[index]


def test_automatic_quality_is_chosen_per_rendition() -> None:
    data = encode(photo((1600, 1200)), "JPEG", quality=95)
    renditions = render(data, [800, 200], CompressOptions(quality="auto"))
    for r in renditions:
        assert r.result.quality_chosen is not None and r.result.score is not None
    assert [decode(r.result.data).size for r in renditions] == [(800, 600), (200, 150)]


def test_renditions_refuse_what_compress_refuses() -> None:
    data = encode(photo((400, 300)), "JPEG")
    with pytest.raises(ImageRejected) as caught:
        render(data, [100], CompressOptions(max_pixels=400 * 300 - 1))
    assert caught.value.code == "too_many_pixels"
    with pytest.raises(ImageRejected) as caught:
        render(b"GIF89a not really", [100])
    assert caught.value.code == "decode_error"
    with pytest.raises(ImageRejected) as caught:
        render(data[: len(data) // 2], [100])
    assert caught.value.code == "decode_error"


def test_sizes_are_checked_deduplicated_and_sorted_largest_first() -> None:
    assert validate_sizes([200, 1600, 800, 200]) == [1600, 800, 200]
    for bad in ([15], [8193], [100] * 7, [True], ["800"]):
        with pytest.raises(ValueError):
            validate_sizes(bad)
    with pytest.raises(ValueError):
        render(encode(photo(), "JPEG"), [])


def test_fitted_keeps_the_aspect_never_enlarges_and_keeps_one_pixel() -> None:
    assert fitted(4000, 3000, 1600) == (1600, 1200)
    assert fitted(3000, 4000, 1600) == (1200, 1600)
    assert fitted(100, 50, 1600) == (100, 50)
    assert fitted(10000, 10, 100) == (100, 1)


def test_a_rendition_of_a_graphic_stays_lossless_when_that_is_smaller() -> None:
    data = encode(logo(1024, 512), "PNG", optimize=True)
    (r,) = render(data, [256])
    assert decode(r.result.data).size == (256, 128)
    assert len(r.result.data) < len(data)
    assert r.result.candidate in ("reencoded", "lossless_png")


def test_an_mpo_gives_renditions_of_its_first_picture() -> None:
    first = photo((1200, 900), seed=3)
    second = photo((1200, 900), seed=4)
    buf = BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[second], quality=90)
    renditions = render(buf.getvalue(), [600, 100])
    assert [decode(r.result.data).size for r in renditions] == [(600, 450), (100, 75)]
    assert all(r.result.input_format == "MPO" for r in renditions)


def test_the_output_csv_adds_a_column_per_further_size_aligned_with_the_inputs() -> None:
    from imageproc.engine import csv_io

    rows = [("1", "Sofa", ["a", "b"], ["A1600", None], [], [["A800", None], ["A200", None]])]
    text = "".join(csv_io.render_output(rows, further_sizes=[800, 200]))
    assert text.splitlines() == [
        "S. No.,Product Name,Input Image Urls,Output Image Urls,Output Image Urls (800px),Output Image Urls (200px)",
        '1,Sofa,"a,b","A1600,","A800,","A200,"',  # an empty slot where b is not done
    ]
    with pytest.raises(ValueError, match="aligned"):
        list(csv_io.render_output([("1", "S", ["a"], ["x"], [], [["y", "z"]])], further_sizes=[800]))


def test_an_uploaded_output_csv_with_size_columns_gives_them_up() -> None:
    from imageproc.engine import csv_io

    header = "S. No.,Product Name,Input Image Urls,Output Image Urls,Output Image Urls (800px),Note\r\n"
    row = "1,Shirt,https://img.example/a.jpg,https://old/a.jpg,https://old/a-800.jpg,keep me\r\n"
    parsed = csv_io.open_csv((header + row).encode())
    assert parsed.layout.header == ("S. No.", "Product Name", "Input Image Urls", "Note")
    assert [r.extra for r in parsed.rows] == [("keep me",)]
