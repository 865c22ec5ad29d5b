"""Tests for imageproc.engine.compress. Every fixture image is generated here with Pillow."""

from __future__ import annotations

import pickle
import random
import struct
import warnings
import zlib
from io import BytesIO
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageCms, ImageFile, ImageStat, JpegImagePlugin

from imageproc.engine import compress as compress_module
from imageproc.engine.compress import (
    ALLOWED_INPUT_FORMATS,
    OUTPUT_FORMATS,
    CompressOptions,
    ImageRejected,
    compress,
    configure_pillow,
)

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
ORIENTATION = 0x0112
GPS_IFD = 0x8825
MAKE = 0x010F


# --- helpers ---------------------------------------------------------------------


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def decode(data: bytes) -> ImageFile.ImageFile:
    im = Image.open(BytesIO(data))
    im.load()
    return im


def photo(size: tuple[int, int] = (256, 192), seed: int = 1) -> Image.Image:
    """Gradients plus seeded noise: compresses like a photograph, unlike a flat colour."""
    width, height = size
    noise = Image.frombytes("L", size, random.Random(seed).randbytes(width * height))
    red = Image.linear_gradient("L").resize(size)
    green = Image.blend(Image.radial_gradient("L").resize(size), noise, 0.3)
    blue = Image.blend(red.transpose(Image.Transpose.ROTATE_180), noise, 0.15)
    return Image.merge("RGB", (red, green, blue))


def cmyk_photo(size: tuple[int, int] = (128, 96)) -> Image.Image:
    """Mostly (0, 255, 255, 0) -- red when converted naively -- with a photo's texture."""
    cyan, magenta, yellow = photo(size).split()
    empty = Image.new("L", size, 0)
    return Image.merge(
        "CMYK",
        (
            cyan.point(lambda v: v // 8),
            magenta.point(lambda v: 255 - v // 12),
            yellow.point(lambda v: 255 - v // 14),
            empty,
        ),
    )


def grey_photo(size: tuple[int, int] = (64, 64), level: int = 128, seed: int = 3) -> Image.Image:
    """`level` plus or minus 24 of noise: a greyscale photograph's texture, not a graphic."""
    noise = Image.frombytes("L", size, random.Random(seed).randbytes(size[0] * size[1]))
    return noise.point(lambda v: level - 24 + v * 48 // 255)


def textured(colour: tuple[int, ...], size: tuple[int, int] = (64, 64), seed: int = 5) -> Image.Image:
    """A colour (RGB or RGBA) with +-12 of noise in each colour band."""
    bands = [
        grey_photo(size, level=c if c > 12 else 12, seed=seed + i).point(lambda v, c=c: c + (v - max(c, 12)) // 2)
        for i, c in enumerate(colour[:3])
    ]
    im = Image.merge("RGB", bands)
    if len(colour) == 4:
        im.putalpha(colour[3])
    return im


def close_to(actual: Any, expected: tuple[int, ...], tolerance: int = 12) -> bool:
    values = actual if isinstance(actual, tuple) else (actual,)
    return len(values) == len(expected) and all(abs(a - e) <= tolerance for a, e in zip(values, expected, strict=True))


def mean_abs_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / len(a.getbands())


def rejected(data: bytes, options: CompressOptions | None = None) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        compress(data, options)
    return info.value


def exif_with_privacy_data(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[MAKE] = "SecretCam"
    exif[GPS_IFD] = {1: "N", 2: (52.0, 30.0, 0.0), 3: "E", 4: (13.0, 24.0, 0.0)}
    return exif


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def cmyk_icc_black_or(lab: tuple[float, float, float]) -> bytes:
    """An ICC v2 CMYK printer profile whose A2B0 lut maps K=0 to `lab` and K=1 to black,
    whatever C, M and Y are. Output through it is easy to tell from naive CMYK->RGB."""
    lightness, a, b = lab
    colour = [round(lightness * 0xFF00 / 100), round((a + 128) * 256), round((b + 128) * 256)]
    black = [0, 0x8000, 0x8000]
    lut = b"mft2" + bytes(4) + bytes([4, 3, 2, 0])  # 4 in, 3 out, 2 grid points
    lut += struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x10000)
    lut += struct.pack(">HH", 2, 2)
    lut += struct.pack(">8H", *([0, 0xFFFF] * 4))
    lut += struct.pack(">48H", *((colour + black) * 8))  # K varies fastest
    lut += struct.pack(">6H", *([0, 0xFFFF] * 3))
    d50 = struct.pack(">3i", *(round(v * 65536) for v in (0.9642, 1.0, 0.8249)))
    tags = [(b"A2B0", lut), (b"wtpt", b"XYZ " + bytes(4) + d50)]
    table_size = 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for signature, payload in tags:
        table += signature + struct.pack(">II", 128 + table_size + len(body), len(payload))
        body += payload + bytes(-len(payload) % 4)
    header = (
        struct.pack(">I", 128 + table_size + len(body))
        + bytes(4)
        + bytes([2, 0x10, 0, 0])
        + b"prtrCMYKLab "
        + bytes(12)
        + b"acsp"
        + bytes(28)
        + d50
        + bytes(48)
    )
    assert len(header) == 128
    return header + table + body


def png_with_header_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims another size: decoding it could never succeed."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr_start = 8 + 8  # signature, then the IHDR length and type
    data[ihdr_start : ihdr_start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr_start - 4 : ihdr_start + 13]))
    data[ihdr_start + 13 : ihdr_start + 17] = struct.pack(">I", crc)
    return bytes(data)


# --- happy paths -----------------------------------------------------------------


def test_rgb_jpeg_becomes_a_smaller_baseline_jpeg_of_the_same_size() -> None:
    source_image = photo()
    source = encode(source_image, "JPEG", quality=95)

    result = compress(source)

    assert not result.kept_original
    assert len(result.data) < len(source)
    assert (result.output_format, result.content_type, result.extension) == (
        "jpeg",
        "image/jpeg",
        "jpg",
    )
    assert (result.width, result.height, result.input_format) == (256, 192, "JPEG")
    out = decode(result.data)
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (256, 192))
    assert "progressive" not in out.info
    assert JpegImagePlugin.get_sampling(out) == 2  # 4:2:0
    assert "exif" not in out.info and "icc_profile" not in out.info
    assert mean_abs_difference(out, source_image) < 12


@pytest.mark.parametrize("quality", [10, 90])
def test_quality_option_is_used(quality: int) -> None:
    source_image = photo()
    source = encode(source_image, "PNG")
    low = compress(source, CompressOptions(quality=10))
    result = compress(source, CompressOptions(quality=quality))
    assert result.quality_chosen == quality
    before = compress(source, CompressOptions(quality=quality, jpeg_encoder="turbo"))
    expected = encode(source_image, "JPEG", quality=quality, subsampling=2)
    assert len(before.data) == len(expected)  # the encoder before is still there, unchanged
    assert (len(result.data) > len(low.data)) == (quality > 10)


def test_progressive_option_writes_a_progressive_jpeg() -> None:
    source = encode(photo(), "PNG")
    result = compress(source, CompressOptions(progressive=True, optimize=True))
    out = decode(result.data)
    assert out.info.get("progressive") == 1
    assert out.size == (256, 192)


def test_rgba_png_is_flattened_onto_white() -> None:
    im = photo((64, 64)).convert("RGBA")
    im.putalpha(0)  # transparent, whatever the colour
    im.paste((200, 0, 0, 255), (32, 0, 64, 32))
    im.paste((0, 0, 0, 128), (32, 32, 64, 64))  # half-transparent black

    result = compress(encode(im, "PNG"))

    assert result.candidate == "reencoded"
    out = decode(result.data)
    assert out.mode == "RGB"
    assert close_to(out.getpixel((8, 8)), WHITE)
    assert close_to(out.getpixel((48, 8)), (200, 0, 0))
    assert close_to(out.getpixel((48, 48)), (127, 127, 127))


def test_palette_png_with_transparency_is_flattened_onto_white() -> None:
    # 256 colours of noise: a palette photograph, which JPEG re-encodes smaller.
    im = Image.frombytes("P", (64, 64), random.Random(7).randbytes(64 * 64))
    im.putpalette([0, 0, 0] + [v for i in range(1, 256) for v in (i // 8, i // 8, 200 + i % 56)])
    im.paste(0, (0, 0, 32, 64))
    source = encode(im, "PNG", transparency=0)  # index 0 (black) is transparent

    result = compress(source)

    assert result.candidate == "reencoded"
    out = decode(result.data)
    assert out.mode == "RGB"
    assert close_to(out.getpixel((8, 32)), WHITE)
    red, green, blue = out.getpixel((56, 32))  # type: ignore[misc]
    assert blue > 180 and red < 50 and green < 50


@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_webp_output_keeps_alpha(mode: str) -> None:
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    im.paste((*GREEN, 255), (32, 0, 64, 64))
    if mode == "P":
        source = encode(im.convert("P"), "PNG", transparency=0)
    else:
        source = encode(im, "PNG")

    result = compress(source, CompressOptions(output_format="webp"))

    assert (result.output_format, result.content_type, result.extension) == (
        "webp",
        "image/webp",
        "webp",
    )
    out = decode(result.data)
    assert (out.format, out.mode, out.size) == ("WEBP", "RGBA", (64, 64))
    assert out.getpixel((8, 8))[3] == 0  # type: ignore[index]
    assert close_to(out.getpixel((48, 8)), (*GREEN, 255), tolerance=20)


def test_rgb_to_webp() -> None:
    source_image = photo()
    result = compress(encode(source_image, "PNG"), CompressOptions(output_format="webp"))
    out = decode(result.data)
    assert (out.format, out.mode, out.size) == ("WEBP", "RGB", (256, 192))
    assert (result.width, result.height, result.input_format) == (256, 192, "PNG")
    assert not result.kept_original
    assert mean_abs_difference(out, source_image) < 15


def test_cmyk_jpeg_becomes_rgb_jpeg() -> None:
    source = encode(cmyk_photo(), "JPEG", quality=95)
    assert decode(source).info.get("adobe") is not None  # Adobe (inverted) CMYK

    result = compress(source)

    assert not result.kept_original
    out = decode(result.data)
    assert (out.mode, out.size) == ("RGB", (128, 96))
    assert close_to(out.getpixel((64, 48)), RED, tolerance=20)


def test_cmyk_jpeg_that_cannot_be_shrunk_is_kept_as_it_is() -> None:
    # Never larger than the input wins over CMYK -> RGB: browsers display CMYK JPEGs.
    noise = [Image.frombytes("L", (48, 48), random.Random(seed).randbytes(48 * 48)) for seed in (1, 2, 3)]
    cmyk = Image.merge("CMYK", (noise[0].point(lambda v: v // 4), noise[1], noise[2], Image.new("L", (48, 48), 0)))
    source = encode(cmyk, "JPEG", quality=10)
    result = compress(source)
    assert result.kept_original
    assert result.data == source


def test_flat_cmyk_jpeg_becomes_a_smaller_lossless_rgb_png() -> None:
    source = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=20)
    result = compress(source)
    assert result.candidate == "lossless_png"
    assert len(result.data) < len(source)
    out = decode(result.data)
    assert out.format == "PNG"
    assert close_to(out.convert("RGB").getpixel((8, 8)), RED, tolerance=20)


def test_cmyk_jpeg_is_converted_through_its_profile_and_the_profile_dropped() -> None:
    profile = cmyk_icc_black_or((32, 79, -108))
    source = encode(cmyk_photo(), "JPEG", quality=95, icc_profile=profile)

    result = compress(source)

    assert not result.kept_original
    out = decode(result.data)
    assert "icc_profile" not in out.info
    red, green, blue = out.convert("RGB").getpixel((64, 48))  # type: ignore[misc]
    assert blue > 200 and green < 40 and red < 140  # the profile's blue, not red


def test_cmyk_jpeg_with_a_broken_cmyk_profile_falls_back_and_drops_it() -> None:
    broken = bytearray(srgb_icc())
    broken[16:20] = b"CMYK"
    broken[128:] = bytes(len(broken) - 128)  # no usable tag table
    source = encode(cmyk_photo(), "JPEG", quality=95, icc_profile=bytes(broken))

    result = compress(source)

    assert not result.kept_original
    out = decode(result.data)
    assert out.mode == "RGB"
    assert "icc_profile" not in out.info
    assert close_to(out.getpixel((64, 48)), RED, tolerance=20)


def test_exif_orientation_alone_is_kept_and_the_size_is_reported_as_displayed() -> None:
    im = photo((96, 48))
    im.paste(RED, (0, 0, 16, 16))  # top-left as stored
    source = encode(
        im,
        "JPEG",
        quality=95,
        exif=exif_with_privacy_data(6),
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/">GPSLatitude 52</x:xmpmeta>',
        comment=b"shot at home",
    )

    result = compress(source)

    assert not result.kept_original
    assert (result.width, result.height) == (48, 96)
    out = decode(result.data)
    assert out.size == (96, 48)  # pixels untouched: viewers rotate by the tag
    exif = out.getexif()
    assert dict(exif) == {ORIENTATION: 6}
    assert exif.get_ifd(GPS_IFD) == {}
    assert "xmp" not in out.info and "comment" not in out.info
    for secret in (b"SecretCam", b"GPSLatitude", b"shot at home"):
        assert secret not in result.data


def test_webp_output_is_transposed_upright_and_carries_no_exif() -> None:
    im = Image.new("RGB", (96, 48), WHITE)
    im.paste(RED, (0, 0, 16, 16))  # top-left as stored: top-right once rotated 90° CW
    source = encode(im, "JPEG", quality=95, exif=exif_with_privacy_data(6))

    result = compress(source, CompressOptions(output_format="webp"))

    assert (result.width, result.height) == (48, 96)
    out = decode(result.data)
    assert out.size == (48, 96)
    assert "exif" not in out.info and "xmp" not in out.info
    assert close_to(out.getpixel((40, 8)), RED, tolerance=20)
    assert close_to(out.getpixel((8, 8)), WHITE)


@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
@pytest.mark.parametrize("input_format", ["JPEG", "PNG", "WEBP"])
def test_embedded_rgb_icc_profile_is_kept(input_format: str, output_format: str) -> None:
    icc = srgb_icc()
    source = encode(photo(), input_format, icc_profile=icc)
    assert decode(source).info.get("icc_profile") == icc

    result = compress(source, CompressOptions(output_format=output_format))

    assert not result.kept_original
    assert decode(result.data).info.get("icc_profile") == icc


def test_icc_profile_of_another_colour_space_is_dropped() -> None:
    source = encode(grey_photo(), "PNG", icc_profile=srgb_icc())
    out = decode(compress(source).data)
    assert out.mode == "L"
    assert "icc_profile" not in out.info


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_image_gives_its_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (48, 32), colour) for colour in (RED, GREEN, BLUE)]
    source = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)
    animated = Image.open(BytesIO(source))
    assert getattr(animated, "n_frames", 1) == 3

    result = compress(source)

    out = decode(result.data)
    assert result.input_format == fmt
    assert result.candidate != "original"  # the animation is not kept
    assert getattr(out, "n_frames", 1) == 1
    assert out.size == (48, 32)
    assert close_to(out.convert("RGB").getpixel((24, 16)), RED, tolerance=20)


def _grey_as(mode: str, level: int) -> Image.Image:
    texture = grey_photo(level=level)
    if mode == "LA":
        return Image.merge("LA", (texture, Image.new("L", texture.size, 255)))
    if mode == "I;16":
        return texture.convert("I").point(lambda v: v * 257).convert("I;16")
    if mode == "F":
        return texture.convert("F").point(lambda v: v / 255)
    return texture.convert(mode)


@pytest.mark.parametrize(
    ("source_image", "fmt", "expected_grey"),
    [
        (_grey_as("L", 77), "JPEG", 77),
        (_grey_as("L", 77), "PNG", 77),
        (_grey_as("LA", 77), "PNG", 77),
        (_grey_as("I;16", 156), "PNG", 156),  # scaled, not clipped to 255
        (_grey_as("I", 100), "TIFF", 100),
        (_grey_as("F", 127), "TIFF", 127),
    ],
    ids=["L-jpeg", "L-png", "LA-png", "I16-png", "I-tiff", "F-tiff"],
)
def test_greyscale_stays_single_channel(source_image: Image.Image, fmt: str, expected_grey: int) -> None:
    source = encode(source_image, fmt)
    assert decode(source).mode == source_image.mode

    result = compress(source)

    assert result.candidate in ("reencoded", "original")
    out = decode(result.data)
    assert out.mode == "L"
    mean = ImageStat.Stat(out.crop((16, 16, 48, 48))).mean[0]
    assert abs(mean - expected_grey) <= 3


@pytest.mark.parametrize(
    ("source_image", "expected_grey"),
    [
        (Image.new("1", (32, 32), 1), 255),
        (Image.new("LA", (32, 32), (0, 0)), 255),  # transparent -> white when flattened
        (Image.new("I;16", (32, 32), 40000), 156),  # scaled, not clipped to 255
    ],
    ids=["1-png", "LA-transparent", "I16-png"],
)
def test_flat_greyscale_graphic_keeps_its_grey(source_image: Image.Image, expected_grey: int) -> None:
    result = compress(encode(source_image, "PNG"))
    out = decode(result.data).convert("RGBA")
    red, _, _, alpha = out.getpixel((16, 16))  # type: ignore[misc]
    assert abs(red - expected_grey) <= 1 or alpha == 0


def test_lab_tiff_is_converted_to_rgb() -> None:
    source = encode(Image.new("LAB", (16, 16), (255, 128, 128)), "TIFF")  # Lab white
    out = decode(compress(source).data).convert("RGB")
    assert close_to(out.getpixel((8, 8)), WHITE, tolerance=4)


@pytest.mark.parametrize("fmt", ALLOWED_INPUT_FORMATS)
@pytest.mark.parametrize("image", ["flat", "photo"])
def test_every_allowed_input_format_is_accepted(fmt: str, image: str) -> None:
    im = Image.new("RGB", (40, 30), (10, 120, 200)) if image == "flat" else textured((10, 120, 200), (40, 30))
    extra: dict[str, Any] = {"save_all": True, "append_images": [im]} if fmt == "MPO" else {}
    source = encode(im, fmt, **extra)
    result = compress(source)
    out = decode(result.data)
    assert result.input_format == fmt
    assert len(result.data) <= len(source)
    assert (result.width, result.height) == out.size == (40, 30)
    assert close_to(out.convert("RGB").getpixel((20, 15)), (10, 120, 200), tolerance=24)


# --- keeping the original --------------------------------------------------------


def test_already_small_jpeg_is_returned_unchanged() -> None:
    source = encode(photo((64, 64)), "JPEG", quality=20)

    result = compress(source)

    assert result.kept_original
    assert result.data == source
    assert (result.width, result.height, result.input_format) == (64, 64, "JPEG")


@pytest.mark.parametrize("quality", [20, 50, 95])
def test_same_format_output_is_never_larger_than_the_input(quality: int) -> None:
    source = encode(photo((96, 64), seed=quality), "JPEG", quality=quality)
    result = compress(source)
    assert len(result.data) <= len(source)
    assert result.kept_original == (result.data == source)


def test_kept_original_jpeg_loses_its_metadata_but_not_its_pixels() -> None:
    source_image = photo((128, 96))
    plain = encode(source_image, "JPEG", quality=20)
    source = encode(
        source_image,
        "JPEG",
        quality=20,
        exif=exif_with_privacy_data(6),
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/">GPSLatitude 52</x:xmpmeta>',
        comment=b"shot at home",
    )

    result = compress(source, CompressOptions(quality=95))

    assert result.kept_original
    assert len(result.data) <= len(source)
    assert (result.width, result.height) == (96, 128)
    out = decode(result.data)
    assert out.tobytes() == decode(plain).tobytes()  # same compressed image data
    assert dict(out.getexif()) == {ORIENTATION: 6}
    assert "xmp" not in out.info and "comment" not in out.info
    for secret in (b"SecretCam", b"GPSLatitude", b"shot at home"):
        assert secret not in result.data
    assert result.data.endswith(b"\xff\xd9")


def test_kept_original_jpeg_drops_bytes_after_the_end_of_image() -> None:
    source = encode(photo((64, 64)), "JPEG", quality=20)
    result = compress(source + b"appended-video-with-location")
    assert result.kept_original
    assert result.data == source


def test_small_webp_is_returned_unchanged() -> None:
    source = encode(photo((64, 64)), "WEBP", quality=10)
    result = compress(source, CompressOptions(output_format="webp"))
    assert result.kept_original
    assert result.data == source


def test_kept_original_webp_loses_its_metadata_but_not_its_pixels() -> None:
    source_image = photo((96, 64))
    plain = encode(source_image, "WEBP", quality=10)
    source = encode(
        source_image,
        "WEBP",
        quality=10,
        exif=exif_with_privacy_data(6),
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/">GPSLatitude 52</x:xmpmeta>',
        icc_profile=srgb_icc(),
    )

    result = compress(source, CompressOptions(output_format="webp", quality=95))

    assert result.kept_original
    assert len(result.data) <= len(source)
    assert (result.width, result.height) == (64, 96)
    out = decode(result.data)
    assert out.tobytes() == decode(plain).tobytes()
    assert dict(out.getexif()) == {ORIENTATION: 6}
    assert out.info.get("icc_profile") == srgb_icc()
    assert "xmp" not in out.info
    for secret in (b"SecretCam", b"GPSLatitude"):
        assert secret not in result.data


def test_input_of_another_web_format_is_kept_when_the_output_would_be_larger() -> None:
    source = encode(photo((128, 128)), "JPEG", quality=1)
    result = compress(source, CompressOptions(output_format="webp", quality=95))
    assert result.kept_original
    assert result.candidate == "original"
    assert result.data == source
    assert (result.output_format, result.content_type, result.extension) == ("jpeg", "image/jpeg", "jpg")


def test_kept_original_jpeg_loses_a_jfif_thumbnail() -> None:
    plain = encode(photo((128, 96)), "JPEG", quality=20)
    assert plain[2:4] == b"\xff\xe0" and plain[6:11] == b"JFIF\x00"
    app0_end = 4 + int.from_bytes(plain[4:6], "big")
    thumbnail = bytes([2, 2]) + b"THUMBNAILPIX"  # 2x2 RGB thumbnail
    jfif = plain[6:18] + thumbnail
    source = plain[:2] + b"\xff\xe0" + (len(jfif) + 2).to_bytes(2, "big") + jfif + plain[app0_end:]
    assert decode(source).tobytes() == decode(plain).tobytes()

    result = compress(source, CompressOptions(quality=95))

    assert result.kept_original
    assert b"JFIF" not in result.data
    assert b"THUMBNAILPIX" not in result.data
    assert result.data == plain[:2] + plain[app0_end:]


# --- rejections ------------------------------------------------------------------


def test_too_many_pixels_is_decided_from_the_header_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)

    error = rejected(png_with_header_size(8000, 8000), CompressOptions(max_pixels=1_000_000))

    assert error.code == "too_many_pixels"
    assert "8000x8000" in str(error)


def test_pixel_limit_is_inclusive() -> None:
    source = encode(Image.new("RGB", (100, 100)), "PNG")
    assert compress(source, CompressOptions(max_pixels=10_000)).width == 100
    assert rejected(source, CompressOptions(max_pixels=9_999)).code == "too_many_pixels"


@pytest.mark.parametrize(("output_format", "width"), [("webp", 16_384), ("jpeg", 65_501)])
def test_image_wider_than_the_output_format_allows_is_rejected(output_format: str, width: int) -> None:
    source = encode(Image.new("L", (width, 1)), "PNG")
    error = rejected(source, CompressOptions(output_format=output_format))
    assert error.code == "too_many_pixels"
    assert str(width) in error.message


@pytest.mark.parametrize("side", [40, 50])  # above MAX_IMAGE_PIXELS, above twice that
def test_pillow_decompression_bomb_check_is_an_error(monkeypatch: pytest.MonkeyPatch, side: int) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    configure_pillow()  # pytest restores the warning filters after the test
    source = encode(Image.new("RGB", (side, side)), "PNG")
    assert rejected(source).code == "too_many_pixels"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_a_decode_error(fmt: str) -> None:
    source = encode(photo(), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    error = rejected(source[: len(source) * 2 // 3])
    assert error.code == "decode_error"


@pytest.mark.parametrize(
    "data",
    [
        encode(Image.new("RGB", (8, 8)), "JPEG")[:12],  # header cut inside the first segment
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"GIF89a" + b"\xff" * 4,
    ],
    ids=["jpeg", "png", "gif"],
)
def test_corrupt_header_of_an_allowed_format_is_a_decode_error(data: bytes) -> None:
    assert rejected(data).code == "decode_error"


@pytest.mark.parametrize(
    "data",
    [random.Random(0).randbytes(4096), b"", b"hello, world", b"<!doctype html><p>hi</p>"],
    ids=["random", "empty", "text", "html"],
)
def test_non_image_is_not_an_image(data: bytes) -> None:
    assert rejected(data).code == "not_an_image"


def psd_header() -> bytes:
    # signature, version 1, reserved, 3 channels, 16x16, 8 bits, RGB; empty sections
    return b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 16, 16, 8, 3) + bytes(12)


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(Image.new("RGB", (16, 16)), "PDF"),
        lambda: encode(Image.new("RGB", (16, 16)), "EPS"),
        psd_header,
        lambda: encode(Image.new("RGB", (16, 16)), "ICO"),
        lambda: encode(Image.new("RGB", (16, 16)), "JPEG2000"),
        lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
    ],
    ids=["pdf", "eps", "psd", "ico", "jpeg2000", "svg"],
)
def test_format_outside_the_allow_list_is_unsupported(make: Any) -> None:
    assert rejected(make()).code == "unsupported_format"


def test_mpo_gives_its_first_picture() -> None:
    first, second = textured((200, 30, 30), (64, 48)), textured((30, 30, 200), (64, 48))
    source = encode(first, "MPO", save_all=True, append_images=[second], quality=95)
    assert Image.open(BytesIO(source), formats=["JPEG"]).format == "MPO"

    for result in (compress(source), compress(source, CompressOptions(quality=95))):
        assert result.input_format == "MPO"
        out = decode(result.data)
        assert out.format == "JPEG"  # one picture, no MP index
        assert getattr(out, "n_frames", 1) == 1
        assert b"MPF\x00" not in result.data
        assert close_to(tuple(ImageStat.Stat(out).mean), (200, 30, 30), tolerance=16)
        assert len(result.data) <= len(source)


def test_jpeg_with_too_many_scans_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    source = encode(photo(), "JPEG", progressive=True)  # libjpeg writes 10 scans
    assert compress(source).width == 256
    monkeypatch.setattr(compress_module, "_MAX_JPEG_SCANS", 3)
    error = rejected(source)
    assert error.code == "decode_error"
    assert "scans" in error.message


# --- API details -----------------------------------------------------------------


def test_image_rejected_carries_code_and_message_and_survives_pickling() -> None:
    error = ImageRejected("decode_error", "the image data is corrupt")
    assert (error.code, error.message, str(error)) == (
        "decode_error",
        "the image data is corrupt",
        "the image data is corrupt",
    )
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ImageRejected)
    assert (copy.code, copy.message) == (error.code, error.message)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"quality": 0},
        {"quality": 96},
        {"quality": True},
        {"quality": "50"},
        {"output_format": "png"},
        {"output_format": "JPEG"},
        {"max_pixels": 0},
    ],
)
def test_invalid_options_raise_value_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CompressOptions(**kwargs)


def test_configure_pillow_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    configure_pillow()
    configure_pillow()
    bomb_filters = [f for f in warnings.filters if f[2] is Image.DecompressionBombWarning]
    assert [f[0] for f in bomb_filters] == ["error"]
    assert Image.core.get_blocks_max() == 64
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_configure_pillow_refuses_load_truncated_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError):
        configure_pillow()


def test_configure_pillow_moves_the_bomb_limit_to_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    configure_pillow(max_pixels=120_000_000)
    assert Image.MAX_IMAGE_PIXELS == 120_000_000
    buf = BytesIO()
    Image.new("L", (10_000, 10_000)).save(buf, "PNG")  # 100 MP: over Pillow's default, under ours
    result = compress(buf.getvalue(), CompressOptions(max_pixels=120_000_000))
    assert (result.width, result.height) == (10_000, 10_000)
