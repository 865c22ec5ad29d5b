"""Never larger than the input, whatever the format: the candidates (original, lossless),
the graphics corpus (tests/graphics.py), MPO, and the accepted signatures shared with the
download (sniff_format). Every test encodes for real and decodes what came out."""

from __future__ import annotations

import random
import zlib
from io import BytesIO
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from imageproc.engine.compress import ALLOWED_INPUT_FORMATS, CompressOptions, compress, sniff_format
from imageproc.engine.imaging.signatures import sniff_pillow_format
from tests import graphics

CORPUS = graphics.build()
# Random bilevel line art in CCITT Group 4: smaller than its PNG and lossless WebP; only
# monochrome lossless AVIF beats it.
G4_BEATS_PNG_AND_WEBP = {"line-art-1bit.tiff"}


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    im = Image.open(BytesIO(data))
    im.load()
    return im


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    mode = "RGBA" if "A" in a.mode or "transparency" in a.info or "A" in b.mode else "RGB"
    return a.convert(mode).tobytes() == b.convert(mode).tobytes()


# --- the graphics corpus ---------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_graphics_are_never_larger_and_look_the_same(name: str, output_format: str) -> None:
    source = CORPUS[name]
    result = compress(source, CompressOptions(output_format=output_format))
    out = decode(result.data)
    assert out.format == result.output_format.upper().replace("JPG", "JPEG")
    assert out.size == (result.width, result.height) == decode(source).size
    assert len(result.data) <= len(source), result
    assert not result.larger_than_input
    if name in G4_BEATS_PNG_AND_WEBP:
        assert result.candidate == "lossless_avif"
    if result.candidate in ("original", "lossless_png", "lossless_webp", "lossless_avif"):
        assert same_pixels(out, decode(source).convert(out.mode if out.mode != "P" else "RGBA"))


@pytest.mark.parametrize("output_format", ["avif", "auto"])
def test_g4_line_art_becomes_an_exact_monochrome_avif_in_every_format(output_format: str) -> None:
    source = CORPUS["line-art-1bit.tiff"]
    result = compress(source, CompressOptions(output_format=output_format))
    assert (result.candidate, result.output_format, result.encoder) == ("lossless_avif", "avif", "libaom")
    assert len(result.data) < len(source)
    out = decode(result.data)
    assert out.format == "AVIF"
    assert out.convert("L").tobytes() == decode(source).convert("L").tobytes()


def test_lossless_avif_is_offered_for_greyscale_only() -> None:
    from imageproc.engine.imaging.encoders import encode_avif_lossless
    from imageproc.engine.imaging.metadata import OutputMetadata

    none = OutputMetadata(b"", b"")
    assert encode_avif_lossless(graphics.logo(64, 32), meta=none) is None
    grey = graphics.line_art(96, 64)
    data = encode_avif_lossless(grey, meta=none)
    assert data is not None
    assert decode(data).convert("L").tobytes() == grey.tobytes()


def test_a_fax_tiff_becomes_a_small_lossless_png_not_a_huge_jpeg() -> None:
    source = CORPUS["fax-small-g4.tiff"]
    result = compress(source)
    assert result.candidate == "lossless_png"
    assert (result.output_format, result.content_type, result.extension) == ("png", "image/png", "png")
    out = decode(result.data)
    assert out.mode in ("1", "P")  # 1 bit per pixel
    assert len(result.data) < len(source)


def test_flat_graphic_in_jpeg_becomes_palette_png_with_its_exact_colours() -> None:
    source = CORPUS["banner.gif"]
    result = compress(source)
    assert result.candidate == "lossless_png"
    assert same_pixels(decode(result.data), decode(source))


def test_photograph_is_re_encoded_not_kept_lossless() -> None:
    noise = Image.frombytes("RGB", (200, 150), random.Random(1).randbytes(200 * 150 * 3))
    photo = Image.blend(noise, Image.linear_gradient("L").convert("RGB").resize((200, 150)), 0.6)
    result = compress(encode(photo, "PNG"))
    assert result.candidate == "reencoded"
    assert result.quality_chosen == 50
    assert decode(result.data).format == "JPEG"


# --- originals -------------------------------------------------------------------------------


def png_chunks(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kinds.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return kinds


def test_kept_png_loses_its_text_chunks_but_not_its_pixels() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "shot at home, GPS 52.5 13.4")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>GPSLatitude</x:xmpmeta>")
    im = graphics.size_chart(300, 200).quantize(8)
    source = encode(im, "PNG", pnginfo=info, optimize=True)

    result = compress(source)

    assert result.candidate in ("original", "lossless_png")
    assert b"GPS" not in result.data and b"shot at home" not in result.data
    assert set(png_chunks(result.data)) <= {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"eXIf", b"iTXt"}
    assert same_pixels(decode(result.data), im)


def test_kept_gif_loses_its_comment() -> None:
    im = graphics.palette_banner(300, 100)
    source = encode(im, "GIF", comment=b"made by someone at 52.5N 13.4E")
    result = compress(source, CompressOptions(output_format="jpeg"))
    assert result.candidate in ("original", "lossless_png")
    assert b"52.5N" not in result.data
    assert same_pixels(decode(result.data), im)


def test_animated_png_is_not_kept_as_it_is() -> None:
    frames = [graphics.palette_banner(200, 80).convert("RGB") for _ in range(2)]
    frames[1] = frames[1].transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    source = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    result = compress(source)
    assert result.candidate != "original"
    out = decode(result.data)
    assert getattr(out, "n_frames", 1) == 1
    assert same_pixels(out, frames[0])


def test_kept_webp_without_vp8x_gets_one_for_the_copyright() -> None:
    from imageproc.engine.imaging.metadata import OutputMetadata, strip_webp

    source = encode(graphics.logo(64, 32), "WEBP", lossless=True)
    assert source[12:16] in (b"VP8L", b"VP8 ")
    meta = OutputMetadata(b"Exif\x00\x00" + Image.Exif().tobytes()[6:], b"<x:xmpmeta/>")
    out = strip_webp(source, meta, (64, 32), has_alpha=False)
    assert out[12:16] == b"VP8X"
    im = decode(out)
    assert im.size == (64, 32)
    assert im.info.get("xmp") == b"<x:xmpmeta/>"


# --- MPO -------------------------------------------------------------------------------------


def test_mpo_is_read_as_its_first_picture_and_sniffed_as_jpeg() -> None:
    first = graphics.logo(128, 64)
    second = first.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    source = encode(first, "MPO", save_all=True, append_images=[second], quality=95)
    assert sniff_format(source) == "image/jpeg"
    result = compress(source)
    assert result.input_format == "MPO"
    out = decode(result.data)
    assert out.format in ("JPEG", "PNG") and getattr(out, "n_frames", 1) == 1
    assert out.convert("RGB").getpixel((60, 10)) == pytest.approx(first.getpixel((60, 10)), abs=40)


# --- signatures ------------------------------------------------------------------------------


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + bytes(64)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xd8\xff\xe0" + bytes(20), "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n" + bytes(20), "image/png"),
        (b"GIF87a" + bytes(20), "image/gif"),
        (b"GIF89a" + bytes(20), "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(20), "image/webp"),
        (b"BM" + bytes(12) + (40).to_bytes(4, "little") + bytes(20), "image/bmp"),
        (b"II*\x00" + bytes(20), "image/tiff"),
        (b"MM\x00*" + bytes(20), "image/tiff"),
        (b"II+\x00" + bytes(20), "image/tiff"),  # BigTIFF
        (b"MM\x00+" + bytes(20), "image/tiff"),
        (ftyp(b"avif", b"mif1", b"miaf"), "image/avif"),
        (ftyp(b"mif1", b"avif"), "image/avif"),
        (ftyp(b"heic", b"mif1"), "image/heic"),
        (ftyp(b"mif1", b"heic"), "image/heic"),
        (ftyp(b"heix"), "image/heic"),
        (ftyp(b"isom", b"mp41"), None),  # a video
        (b"BM" + bytes(40), None),  # "BM" without a BMP header
        (b"%PDF-1.7", None),
        (b"", None),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
    ],
)
def test_sniff_format(data: bytes, expected: str | None) -> None:
    assert sniff_format(data) == expected


@pytest.mark.parametrize("fmt", list(ALLOWED_INPUT_FORMATS))
def test_every_accepted_format_is_sniffed_and_every_sniffed_one_is_accepted(fmt: str) -> None:
    im = graphics.logo(64, 32)
    extra: dict[str, Any] = {"save_all": True, "append_images": [im]} if fmt == "MPO" else {}
    data = encode(im, fmt, **extra)
    assert sniff_format(data) is not None
    assert sniff_pillow_format(data) == {"MPO": "JPEG"}.get(fmt, fmt)
    assert compress(data).width == 64


def test_bigtiff_is_accepted() -> None:
    im = graphics.logo(64, 32)
    data = encode(im, "TIFF", big_tiff=True)
    assert data[:4] == b"II+\x00"
    assert sniff_format(data) == "image/tiff"
    out = decode(compress(data).data)
    assert out.size == (64, 32)


def test_png_crc_checked_helpers_stay_valid() -> None:
    # The PNG writer of kept originals makes chunks with a CRC over type and data.
    data = compress(encode(graphics.palette_banner(100, 40), "PNG")).data
    pos = 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunk = data[pos + 4 : pos + 8 + length]
        assert zlib.crc32(chunk) == int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big")
        pos += 12 + length
