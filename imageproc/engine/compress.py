"""Re-encode untrusted images as smaller JPEG or WebP files.

No Django imports: callers pass a CompressOptions built from settings or the request.
Call configure_pillow() once in every worker process before the first compress().
"""

from __future__ import annotations

import functools
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Final, cast

from PIL import Image, ImageCms, ImageFile, UnidentifiedImageError

ALLOWED_INPUT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "webp")


@dataclass(frozen=True)
class CompressOptions:
    """How to re-encode an image. Invalid values raise ValueError at construction."""

    quality: int = 50  # 1..95
    output_format: str = "jpeg"  # "jpeg" | "webp"
    max_pixels: int = 50_000_000
    optimize: bool = False
    progressive: bool = False

    def __post_init__(self) -> None:
        # bool is an int subclass: quality=True is a caller bug, not quality 1.
        if isinstance(self.quality, bool) or not isinstance(self.quality, int):
            raise ValueError(f"quality must be an int, got {self.quality!r}")
        if not 1 <= self.quality <= 95:
            raise ValueError(f"quality must be between 1 and 95, got {self.quality}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int):
            raise ValueError(f"max_pixels must be an int, got {self.max_pixels!r}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")


@dataclass(frozen=True)
class CompressResult:
    """The encoded image and what callers need to store and serve it."""

    data: bytes
    output_format: str  # "jpeg" | "webp"
    content_type: str  # "image/jpeg" | "image/webp"
    extension: str  # "jpg" | "webp"
    width: int  # as displayed, i.e. after EXIF orientation
    height: int
    input_format: str  # Pillow's format name of the input, e.g. "JPEG", "PNG"
    kept_original: bool  # the input's own encoding was returned (see compress())


class ImageRejected(Exception):
    """The input cannot be turned into an output image; `code` says why.

    Codes: "not_an_image", "unsupported_format", "too_many_pixels", "decode_error".
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    # Exception pickles only self.args (the message); task queues pickle exceptions
    # across processes, and unpickling would then fail for lack of `code`.
    def __reduce__(self) -> tuple[type[ImageRejected], tuple[str, str]]:
        return (type(self), (self.code, self.message))


@dataclass(frozen=True)
class _Output:
    pillow_format: str
    content_type: str
    extension: str
    max_side: int  # the encoder's own limit; Pillow would fail only after decoding


_OUTPUTS: Final[dict[str, _Output]] = {
    "jpeg": _Output("JPEG", "image/jpeg", "jpg", 65_500),
    "webp": _Output("WEBP", "image/webp", "webp", 16_383),
}

# Pillow plugins report corrupt input through many exception types, not only OSError.
# The try blocks using this tuple wrap Pillow calls only, so our own bugs still surface.
_DECODE_ERRORS: Final = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    ZeroDivisionError,
    OverflowError,
)
_BOMB_ERRORS: Final = (Image.DecompressionBombError, Image.DecompressionBombWarning)

# Each progressive scan is a full pass over the image, so a small file with thousands
# of scans is a CPU bomb. Ordinary progressive JPEGs have about 10 scans.
_MAX_JPEG_SCANS: Final = 100

# iCCP in PNG is capped at 1 MiB by Pillow; bigger profiles elsewhere are abuse, and the
# JPEG writer would split them over hundreds of APP2 markers.
_MAX_ICC_BYTES: Final = 1 << 20

_ORIENTATION_TAG: Final = 0x0112
_TRANSPOSE_FOR_ORIENTATION: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Only consulted after Pillow, limited to ALLOWED_INPUT_FORMATS, failed to identify the
# data: a signature tells "a format we refuse" (or "a broken file of a format we take")
# apart from "not an image at all" without letting any other Pillow plugin parse it.
_REFUSED_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"%PDF-", "PDF"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"icns", "ICNS"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
)
_ACCEPTED_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)


def configure_pillow(max_pixels: int | None = None) -> None:
    """Apply the process-wide Pillow settings this module relies on.

    Call once per worker process at start-up; calling it again is harmless. `max_pixels`
    moves Pillow's own bomb check to our limit, so that raising the limit above Pillow's
    default (~89 MP) works and a bomb's message names our limit.
    Raises RuntimeError if something in the process enabled
    ImageFile.LOAD_TRUNCATED_IMAGES, which would make truncated uploads "succeed".
    """
    # Pillow's default allocator returns freed blocks to the OS and page-faults on every
    # image; keeping 64 blocks around cut a 12 MP image from ~104 ms to ~65 ms. With 4 MiB
    # blocks instead of 16, fewer cached blocks are resized (and faulted in again) to fit
    # the next image: a third of the page faults, 2% less time over the benchmark corpus.
    # The cache holds at most what the biggest image used (256 MiB cap: 64 x 4 MiB).
    Image.core.set_block_size(4 * 1024 * 1024)  # type: ignore[attr-defined]
    Image.core.set_blocks_max(64)  # type: ignore[attr-defined]  # not re-exported in stubs
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that. simplefilter replaces
    # an identical existing filter, so repeated calls do not pile up entries.
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = max_pixels
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is enabled; truncated images would be accepted")


def compress(data: bytes, options: CompressOptions | None = None) -> CompressResult:
    """Re-encode `data` (an untrusted image) as JPEG or WebP and return the result.

    - Only ALLOWED_INPUT_FORMATS are parsed at all; the pixel limit is checked from the
      header before any pixel data is decoded.
    - Animated inputs give their first frame; the size is never reduced.
    - EXIF orientation is honoured: JPEG output carries an EXIF block holding only the
      orientation tag (no pixel work); WebP output is transposed upright and carries no
      EXIF, because viewers disagree on whether WebP EXIF orientation applies.
      All other metadata (GPS, camera data, XMP, comments) is dropped.
    - An embedded ICC profile is kept when it matches the output's colour space;
      CMYK (and LAB) is converted to sRGB, through its profile when it has one.
    - Transparency is flattened onto white for JPEG and kept for WebP.
    - When the output format is the input's format and re-encoding does not make the
      file smaller, the input's own encoding is returned (kept_original=True), so the
      result is never larger than the input. Metadata is still removed from it without
      re-encoding; when there is none to remove the bytes are returned unchanged.

    Raises ImageRejected for any problem with the input; ValueError only for a bad
    CompressOptions.
    """
    opts = options if options is not None else CompressOptions()
    out = _OUTPUTS[opts.output_format]
    with _open(data) as im:
        input_format = _check_header(im, data, opts, out)
        orientation = _decode(im)
        pixels, icc = _prepare_pixels(im, opts.output_format)
        if opts.output_format == "webp" and orientation != 1:
            pixels = pixels.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
        encoded = _encode(pixels, opts, icc, orientation)

    width, height = im.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width

    kept_original = False
    if input_format == out.pillow_format and len(encoded) >= len(data):
        kept_original = True
        if input_format == "JPEG":
            encoded = _strip_jpeg_metadata(data, orientation)
        else:
            encoded = _strip_webp_metadata(data, orientation)

    return CompressResult(
        data=encoded,
        output_format=opts.output_format,
        content_type=out.content_type,
        extension=out.extension,
        width=width,
        height=height,
        input_format=input_format,
        kept_original=kept_original,
    )


def _open(data: bytes) -> ImageFile.ImageFile:
    try:
        return Image.open(BytesIO(data), formats=ALLOWED_INPUT_FORMATS)
    except UnidentifiedImageError as exc:
        raise _unidentified(data) from exc
    except _BOMB_ERRORS as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except _DECODE_ERRORS as exc:
        raise ImageRejected("decode_error", f"cannot read the image header: {exc}") from exc


def _unidentified(data: bytes) -> ImageRejected:
    head = data[:16]
    for signature, name in _REFUSED_SIGNATURES:
        if head.startswith(signature):
            return ImageRejected("unsupported_format", f"{name} images are not accepted")
    if head[4:8] == b"ftyp":
        return ImageRejected("unsupported_format", "AVIF/HEIF images are not accepted")
    if b"<svg" in data[:1024].lower():
        return ImageRejected("unsupported_format", "SVG images are not accepted")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return ImageRejected("decode_error", "the WEBP header is corrupt")
    for signature, name in _ACCEPTED_SIGNATURES:
        if head.startswith(signature):
            return ImageRejected("decode_error", f"the {name} header is corrupt")
    return ImageRejected("not_an_image", "the data is not a recognised image file")


def _check_header(im: ImageFile.ImageFile, data: bytes, opts: CompressOptions, out: _Output) -> str:
    # Image.open(formats=["JPEG"]) hands back MPO for multi-picture JPEGs.
    input_format = im.format or ""
    if input_format not in ALLOWED_INPUT_FORMATS:
        raise ImageRejected("unsupported_format", f"{input_format or 'this'} images are not accepted")
    width, height = im.size
    if width * height > opts.max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"the image is {width}x{height} ({width * height} pixels); the limit is {opts.max_pixels} pixels",
        )
    if max(width, height) > out.max_side:
        raise ImageRejected(
            "too_many_pixels",
            f"the image is {width}x{height}; {out.pillow_format} allows at most {out.max_side} pixels per side",
        )
    if input_format == "JPEG":
        _check_jpeg_scans(data)
    return input_format


def _check_jpeg_scans(data: bytes) -> None:
    # FF DA cannot occur inside entropy-coded data, so this C-speed count is an upper
    # bound; the exact marker walk is needed only for files that look suspicious.
    if data.count(b"\xff\xda") <= _MAX_JPEG_SCANS:
        return
    scans = sum(1 for segment in _jpeg_segments(data) if segment[0] == 0xDA)
    if scans > _MAX_JPEG_SCANS:
        raise ImageRejected(
            "decode_error",
            f"the JPEG has {scans} scans; at most {_MAX_JPEG_SCANS} are accepted",
        )


def _decode(im: ImageFile.ImageFile) -> int:
    """Decode the pixels (first frame) and return the EXIF orientation (1..8)."""
    try:
        im.load()
    except _BOMB_ERRORS as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except _DECODE_ERRORS as exc:
        raise ImageRejected("decode_error", f"the image data is corrupt: {exc}") from exc
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    except _DECODE_ERRORS:
        # Broken EXIF is common and harmless to the pixels: treat it as absent.
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def _prepare_pixels(im: Image.Image, output_format: str) -> tuple[Image.Image, bytes | None]:
    """Return pixels in a mode the encoder takes (L/RGB for JPEG, RGB/RGBA for WebP)
    and the ICC profile to embed, if any."""
    raw_icc = im.info.get("icc_profile")
    icc = raw_icc if isinstance(raw_icc, bytes) and raw_icc else None
    mode = im.mode

    if mode == "CMYK":
        return _cmyk_to_srgb(im, icc), None
    if mode == "LAB":
        converted = ImageCms.profileToProfile(im, ImageCms.createProfile("LAB"), _srgb_profile(), outputMode="RGB")
        return cast(Image.Image, converted), None

    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        im = _to_8bit_gray(im)
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("YCbCr", "HSV", "RGBX"):
        im = im.convert("RGB")
    elif mode == "La":
        im = im.convert("LA")
    elif mode in ("RGBa", "PA"):
        im = im.convert("RGBA")
    elif mode == "P":
        # Converting P with a transparency entry straight to RGB would drop it.
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("L", "RGB") and "transparency" in im.info:
        # PNG tRNS: one colour stands for "transparent".
        im = im.convert("LA" if mode == "L" else "RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        raise ImageRejected("unsupported_format", f"colour mode {mode} is not supported")

    if output_format == "jpeg":
        if im.mode in ("LA", "RGBA"):
            im = _flatten_on_white(im)
    elif im.mode in ("L", "LA"):
        # libwebp takes only RGB(A).
        im = im.convert("RGBA" if im.mode == "LA" else "RGB")

    return im, _matching_icc(icc, im.mode)


def _cmyk_to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    if icc is not None and _icc_colour_space(icc) == b"CMYK":
        try:
            converted = ImageCms.profileToProfile(
                im, ImageCms.ImageCmsProfile(BytesIO(icc)), _srgb_profile(), outputMode="RGB"
            )
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # an unusable profile: fall back to the naive formula below
        else:
            return cast(Image.Image, converted)
    # Pillow decodes Adobe's inverted CMYK JPEGs to normal CMYK already.
    return im.convert("RGB")


@functools.cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _to_8bit_gray(im: Image.Image) -> Image.Image:
    # convert("L") clips instead of scaling: a 16-bit image would come out nearly white.
    if im.mode.startswith("I;16"):
        return im.convert("I").point(lambda v: v * (255 / 65535)).convert("L")
    low, high = cast(tuple[float, float], im.getextrema())
    if low >= 0 and high <= (1 if im.mode == "F" else 255):
        scale, offset = (255.0 if im.mode == "F" else 1.0), 0.0
    elif im.mode == "I" and low >= 0 and high <= 65535:
        scale, offset = 255 / 65535, 0.0
    elif high > low:
        scale, offset = 255 / (high - low), -low * 255 / (high - low)
    else:
        scale, offset = 0.0, 0.0
    return im.point(lambda v: v * scale + offset).convert("L")


def _flatten_on_white(im: Image.Image) -> Image.Image:
    base = Image.new("L" if im.mode == "LA" else "RGB", im.size, "white")
    base.paste(im, mask=im)  # an LA/RGBA mask means "use its alpha band"
    return base


def _icc_colour_space(icc: bytes) -> bytes:
    return icc[16:20] if len(icc) >= 128 else b""


def _matching_icc(icc: bytes | None, mode: str) -> bytes | None:
    # A profile for another colour space (a CMYK or grey profile on RGB pixels) would
    # make viewers misinterpret the pixels, which is worse than no profile at all.
    if icc is None or len(icc) > _MAX_ICC_BYTES:
        return None
    wanted = b"GRAY" if mode == "L" else b"RGB "
    return icc if _icc_colour_space(icc) == wanted else None


def _orientation_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[_ORIENTATION_TAG] = orientation
    return exif.tobytes()  # b"Exif\0\0" + TIFF structure, as JPEG APP1 wants it


def _encode(im: Image.Image, opts: CompressOptions, icc: bytes | None, orientation: int) -> bytes:
    buf = BytesIO()
    if opts.output_format == "jpeg":
        im.save(
            buf,
            "JPEG",
            quality=opts.quality,
            optimize=opts.optimize,
            progressive=opts.progressive,
            subsampling=2,  # 4:2:0: ~20% smaller than 4:4:4 and faster
            exif=_orientation_exif(orientation) if orientation != 1 else b"",
            icc_profile=icc,
            comment=b"",  # otherwise Pillow copies the input's COM segment
        )
    else:
        im.save(
            buf,
            "WEBP",
            quality=opts.quality,
            method=4,
            icc_profile=icc or b"",
            exif=b"",
            xmp=b"",
        )
    return buf.getvalue()


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """Yield (marker, start, payload_start, end) for each JPEG marker.

    Entropy-coded data between markers is skipped. Stops after EOI, or silently at the
    first inconsistency (callers keep whatever follows the last segment as it is).
    """
    size = len(data)
    if not data.startswith(b"\xff\xd8"):
        return
    yield 0xD8, 0, 2, 2
    pos = 2
    in_scan = False
    while pos < size:
        if in_scan:
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= size:
                return
            follower = data[pos + 1]
            if follower == 0x00 or 0xD0 <= follower <= 0xD7:  # byte stuffing, RSTn
                pos += 2
                continue
            in_scan = False
        if data[pos] != 0xFF:
            return
        start = pos
        while pos < size and data[pos] == 0xFF:  # fill bytes may precede a marker
            pos += 1
        if pos >= size:
            return
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            yield marker, start, pos, pos
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            yield marker, start, pos, pos
            continue
        if pos + 2 > size:
            return
        length = int.from_bytes(data[pos : pos + 2], "big")
        end = pos + length
        if length < 2 or end > size:
            return
        yield marker, start, pos + 2, end
        pos = end
        in_scan = marker == 0xDA


def _keep_jpeg_segment(marker: int, payload: bytes) -> bool:
    # Keep what decoding and colour management need; every other APPn and COM segment
    # is metadata (EXIF with GPS and thumbnails, XMP, IPTC, maker notes, comments).
    if marker == 0xE0:
        return payload.startswith(b"JFIF\x00") and len(payload) == 14  # no thumbnail
    if marker == 0xE2:
        return payload.startswith(b"ICC_PROFILE\x00")
    if marker == 0xEE:
        return payload.startswith(b"Adobe")  # says whether the data is YCC/CMYK/YCCK
    return not (0xE1 <= marker <= 0xEF or marker == 0xFE)


def _strip_jpeg_metadata(data: bytes, orientation: int) -> bytes:
    """Drop metadata segments and bytes after EOI without touching the compressed image;
    add an orientation-only EXIF block where needed. Returns `data` itself if nothing
    had to change."""
    pieces: list[bytes] = []
    copied_to = 0
    exif_pending = orientation != 1
    changed = False
    saw_eoi = False
    for marker, start, payload_start, end in _jpeg_segments(data):
        if exif_pending and marker not in (0xD8, 0xE0):
            # JFIF requires its APP0 right after SOI, so EXIF goes after it.
            app1 = _orientation_exif(orientation)
            pieces += [data[copied_to:start], b"\xff\xe1", (len(app1) + 2).to_bytes(2, "big"), app1]
            copied_to = start
            exif_pending = False
            changed = True
        if not _keep_jpeg_segment(marker, data[payload_start:end]):
            pieces.append(data[copied_to:start])
            copied_to = end
            changed = True
        if marker == 0xD9:
            saw_eoi = True
            pieces.append(data[copied_to:end])
            changed = changed or end != len(data)
            copied_to = len(data)
    if not saw_eoi:
        pieces.append(data[copied_to:])
    return b"".join(pieces) if changed else data


_WEBP_IMAGE_CHUNKS: Final = frozenset({b"VP8X", b"VP8 ", b"VP8L", b"ALPH", b"ANIM", b"ANMF", b"ICCP"})


def _strip_webp_metadata(data: bytes, orientation: int) -> bytes:
    """Drop EXIF, XMP and unknown chunks from a WebP file without re-encoding; add an
    orientation-only EXIF chunk where needed. Returns `data` itself if nothing changed."""
    if len(data) < 20 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return data
    riff_end = min(len(data), 8 + int.from_bytes(data[4:8], "little"))
    chunks: list[bytes] = []
    changed = riff_end != len(data)
    pos = 12
    while pos + 8 <= riff_end:
        fourcc = data[pos : pos + 4]
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        end = min(riff_end, pos + 8 + length + (length & 1))
        if fourcc in _WEBP_IMAGE_CHUNKS:
            chunks.append(data[pos:end])
        else:
            changed = True
        pos = end
    if pos < riff_end:
        chunks.append(data[pos:riff_end])
    # Only the extended format (VP8X) can carry metadata, and it must come first.
    if not chunks or not chunks[0].startswith(b"VP8X") or len(chunks[0]) < 9:
        return data
    flags = chunks[0][8] & ~0x0C  # clear the EXIF (0x08) and XMP (0x04) flags
    if orientation != 1:
        tiff = _orientation_exif(orientation)[6:]  # WebP's EXIF chunk has no "Exif\0\0"
        chunks.append(b"EXIF" + len(tiff).to_bytes(4, "little") + tiff + b"\x00" * (len(tiff) & 1))
        flags |= 0x08
        changed = True
    if not changed and flags == chunks[0][8]:
        return data
    chunks[0] = chunks[0][:8] + bytes([flags]) + chunks[0][9:]
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + len(body).to_bytes(4, "little") + body
