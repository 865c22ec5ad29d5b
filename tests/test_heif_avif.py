"""Phone and web formats in: HEIC/HEIF (pillow-heif) and AVIF (Pillow) inputs, made here by
the same libraries, decoded upright and in their colours, under the same limits as the
other formats. Every test encodes for real and decodes what came out."""

from __future__ import annotations

import random
from io import BytesIO
from typing import Any

import pytest
from PIL import Image, ImageOps, ImageStat

from imageproc.engine.compress import CompressOptions, ImageRejected, compress, sniff_format

ORIENTATION, COPYRIGHT = 0x0112, 0x8298
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def displayed(data: bytes) -> Image.Image:
    """What a browser shows: decoded, EXIF orientation applied (JPEG), as RGB."""
    im = Image.open(BytesIO(data))
    im.load()
    return ImageOps.exif_transpose(im.convert("RGB")) if im.format == "JPEG" else im.convert("RGB")


def marked_photo(size: tuple[int, int] = (192, 96)) -> Image.Image:
    """Textured grey with a red block top-left and a blue block bottom-right, as stored."""
    width, height = size
    noise = Image.frombytes("L", size, random.Random(1).randbytes(width * height)).point(lambda v: 110 + v // 8)
    im = Image.merge("RGB", (noise, noise, noise))
    im.paste(RED, (0, 0, 32, 32))
    im.paste(BLUE, (width - 32, height - 32, width, height))
    return im


def near(pixel: Any, colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def block_mean(im: Image.Image, box: tuple[int, int, int, int]) -> tuple[float, ...]:
    return tuple(ImageStat.Stat(im.crop(box)).mean)


@pytest.fixture(params=["HEIF", "AVIF"])
def fmt(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("output_format", ["jpeg", "webp", "avif"])
def test_phone_format_with_orientation_6_is_shown_upright_in_its_colours(fmt: str, output_format: str) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored landscape, shown rotated 90 degrees clockwise
    source = encode(marked_photo(), fmt, exif=exif.tobytes(), quality=90)
    assert sniff_format(source) == ("image/heic" if fmt == "HEIF" else "image/avif")

    result = compress(source, CompressOptions(output_format=output_format, quality=85))

    assert result.input_format == fmt
    assert (result.width, result.height) == (96, 192)
    shown = displayed(result.data)
    assert shown.size == (96, 192)
    # Rotated clockwise: the stored top-left block is now top-right, bottom-right is bottom-left.
    assert near(block_mean(shown, (72, 4, 92, 24)), RED)
    assert near(block_mean(shown, (4, 168, 24, 188)), BLUE)
    assert near(block_mean(shown, (30, 80, 60, 110)), (125, 125, 125), tolerance=20)


def test_phone_photo_keeps_its_colours(fmt: str) -> None:
    im = Image.new("RGB", (128, 128))
    for i, colour in enumerate([(200, 40, 40), (40, 160, 60), (30, 60, 200), (230, 200, 40)]):
        # The colour, with a few levels of noise so that it is a photograph, not a graphic.
        darker = Image.new("RGB", (64, 64), tuple(max(0, c - 8) for c in colour))
        noise = Image.frombytes("L", (64, 64), random.Random(i).randbytes(64 * 64))
        im.paste(Image.composite(Image.new("RGB", (64, 64), colour), darker, noise), ((i % 2) * 64, (i // 2) * 64))
    source = encode(im, fmt, quality=92)
    for output_format in ("jpeg", "webp"):
        shown = displayed(compress(source, CompressOptions(output_format=output_format)).data)
        for i, colour in enumerate([(200, 40, 40), (40, 160, 60), (30, 60, 200), (230, 200, 40)]):
            x, y = (i % 2) * 64 + 16, (i // 2) * 64 + 16
            assert near(block_mean(shown, (x, y, x + 32, y + 32)), colour, tolerance=16)


def test_heic_photo_becomes_a_jpeg_or_keeps_a_smaller_size(fmt: str) -> None:
    source = encode(marked_photo((320, 240)), fmt, quality=95)
    result = compress(source)
    assert len(result.data) <= len(source)
    assert displayed(result.data).size == (320, 240)


def rejected(data: bytes, options: CompressOptions | None = None) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        compress(data, options)
    return info.value


def test_truncated_file_is_a_decode_error(fmt: str) -> None:
    source = encode(marked_photo((256, 256)), fmt, quality=90)
    for cut in (len(source) // 2, len(source) - 20, 40):
        assert rejected(source[:cut]).code == "decode_error"


def with_claimed_size(data: bytes, width: int, height: int) -> bytes:
    """The file with every `ispe` (image spatial extents) box claiming width x height."""
    out = bytearray(data)
    pos = out.find(b"ispe")
    assert pos > 0
    while pos > 0:
        out[pos + 8 : pos + 12] = width.to_bytes(4, "big")
        out[pos + 12 : pos + 16] = height.to_bytes(4, "big")
        pos = out.find(b"ispe", pos + 4)
    return bytes(out)


@pytest.mark.parametrize(("width", "height"), [(10_000, 10_000), (60_000, 60_000)])
def test_header_claiming_too_many_pixels_is_refused_before_decoding(
    fmt: str, width: int, height: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = with_claimed_size(encode(marked_photo((64, 64)), fmt, quality=50), width, height)
    error = rejected(source, CompressOptions(max_pixels=50_000_000))
    # Either our header check (too_many_pixels) or the library's own parse limit (decode_error).
    assert error.code in ("too_many_pixels", "decode_error")
    if width * height < 268_000_000:
        assert error.code == "too_many_pixels"


def test_pixel_limit_applies(fmt: str) -> None:
    source = encode(marked_photo((200, 100)), fmt, quality=50)
    assert compress(source, CompressOptions(max_pixels=20_000)).width == 200
    assert rejected(source, CompressOptions(max_pixels=19_999)).code == "too_many_pixels"


@pytest.mark.parametrize("brand", [b"avif", b"heic"])
def test_garbage_behind_an_image_brand_is_a_decode_error(brand: bytes) -> None:
    data = (24).to_bytes(4, "big") + b"ftyp" + brand + bytes(4) + b"mif1" + brand + bytes(200)
    assert sniff_format(data) is not None
    assert rejected(data).code == "decode_error"


def test_video_file_is_not_an_accepted_format() -> None:
    data = (24).to_bytes(4, "big") + b"ftypisom" + bytes(4) + b"isomiso2" + bytes(200)
    assert sniff_format(data) is None
    assert rejected(data).code == "unsupported_format"


def test_heif_copyright_survives(fmt: str) -> None:
    exif = Image.Exif()
    exif[COPYRIGHT] = "(c) 2026 ACME Photo"
    exif[0x010F] = "SecretCam"
    source = encode(marked_photo((256, 128)), fmt, exif=exif.tobytes(), quality=95)
    result = compress(source, CompressOptions(quality=60))
    out = Image.open(BytesIO(result.data))
    assert out.getexif().get(COPYRIGHT) == "(c) 2026 ACME Photo"
    assert b"SecretCam" not in result.data
