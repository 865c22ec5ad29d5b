"""The encoders: lossy JPEG (libjpeg-turbo through Pillow, or jpegli), WebP and AVIF, and the
lossless candidates for graphics (palette or truecolour PNG, lossless WebP).

Each takes pixels ready for it (see compress._prepare_pixels) and returns the file's bytes
with the given metadata and ICC profile. No option here is process-wide.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from io import BytesIO
from typing import Final, cast

import numpy as np
import pyjpegli
from PIL import Image

from imageproc.engine.imaging.metadata import OutputMetadata, insert_jpeg_metadata

# "tuned": libjpeg-turbo (Pillow) with jpegli's quantization tables, at the table quality that
#   scores as high as libjpeg-turbo's own tables at the quality asked for (TUNED_QUALITY):
#   ~10% fewer bytes at an equal SSIMULACRA2, at libjpeg-turbo's speed (bench/results.md).
# "turbo": libjpeg-turbo with its standard (Annex K) tables: the encoder before.
# "jpegli": Google's jpegli (pyjpegli), adaptive quantization: as small, 2x slower to encode.
JPEG_ENCODERS: Final = ("tuned", "turbo", "jpegli")
# libaom's speeds 0 (slowest) .. 10. 7 with tune=ssimulacra2 (libaom's tuning for that
# metric): at an equal SSIMULACRA2 of 70, ~8% fewer bytes than speed 8 untuned, at ~half
# its speed (bench/results.md, quality=auto; speed 6 saves ~6% more at 0.7x the speed).
AVIF_SPEED: Final = 7
AVIF_TUNE: Final = "ssimulacra2"
WEBP_METHOD: Final = 4
_ICC_CHUNK: Final = 65_519  # bytes of profile per APP2 segment (65535 - 2 - 14)


@dataclass(frozen=True)
class Format:
    name: str  # "jpeg" | "webp" | "avif" | "png" | "gif"
    pillow_format: str
    content_type: str
    extension: str
    max_side: int  # the encoder's own limit; Pillow would fail only after decoding


FORMATS: Final[dict[str, Format]] = {
    "jpeg": Format("jpeg", "JPEG", "image/jpeg", "jpg", 65_500),
    "webp": Format("webp", "WEBP", "image/webp", "webp", 16_383),
    "avif": Format("avif", "AVIF", "image/avif", "avif", 16_384),
    "png": Format("png", "PNG", "image/png", "png", 2**31 - 1),
    "gif": Format("gif", "GIF", "image/gif", "gif", 65_535),
}


def _icc_segments(icc: bytes) -> bytes:
    chunks = [icc[i : i + _ICC_CHUNK] for i in range(0, len(icc), _ICC_CHUNK)]
    out = b""
    for number, chunk in enumerate(chunks, 1):
        payload = b"ICC_PROFILE\x00" + bytes([number, len(chunks)]) + chunk
        out += b"\xff\xe2" + (len(payload) + 2).to_bytes(2, "big") + payload
    return out


# Quality asked for (libjpeg's scale) -> jpegli table quality (fractional: the tables are
# interpolated) whose SSIMULACRA2, mean and 5th percentile over the benchmark's photographs,
# is at least libjpeg-turbo's at the quality asked for (bench/quality.py measures the
# default at 50; the other points come from the same kind of run on 10 of the photographs).
TUNED_QUALITY: Final[tuple[tuple[int, float], ...]] = (
    (1, 1.0),
    (10, 4.0),
    (20, 10.0),
    (30, 18.0),
    (40, 28.0),
    (50, 39.4),
    (60, 53.0),
    (70, 64.0),
    (80, 76.0),
    (90, 88.0),
    (95, 95.0),
)


def tuned_table_quality(quality: int) -> float:
    points = TUNED_QUALITY
    for (q0, t0), (q1, t1) in itertools.pairwise(points):
        if q0 <= quality <= q1:
            return t0 + (t1 - t0) * (quality - q0) / (q1 - q0)
    return float(quality)


@functools.cache
def jpegli_tables(table_quality: int) -> tuple[tuple[int, ...], ...]:
    """jpegli's luma and chroma quantization tables at `table_quality` (they depend on the
    quality alone, not on the image): read back from a tiny jpegli encode, once per quality."""
    tiny = Image.new("RGB", (16, 16), (128, 128, 128))
    with Image.open(BytesIO(pyjpegli.encode(tiny.tobytes(), 16, 16, quality=table_quality))) as im:
        quantization = cast(dict[int, list[int]], im.quantization)  # type: ignore[attr-defined]
        return tuple(tuple(quantization[index]) for index in sorted(quantization))


@functools.cache
def tuned_tables(quality: int) -> tuple[tuple[int, ...], ...]:
    """The tables of the "tuned" encoder at `quality`: jpegli's, interpolated between the two
    integer table qualities around tuned_table_quality(quality) and rounded, except the luma
    DC step, which takes the finer of the two: banding in smooth areas is what sets the
    worst scores (at quality 50 that alone lifts the 5th percentile above libjpeg-turbo's)."""
    exact = tuned_table_quality(quality)
    low = max(1, min(100, int(exact)))
    high = min(100, low + 1)
    weight = exact - low
    tables = []
    for index, (a, b) in enumerate(zip(jpegli_tables(low), jpegli_tables(high), strict=True)):
        table = [max(1, min(255, round(x + (y - x) * weight))) for x, y in zip(a, b, strict=True)]
        if index == 0 and weight > 0:
            table[0] = min(a[0], b[0])
        tables.append(tuple(table))
    return tuple(tables)


def encode_jpeg(
    im: Image.Image,
    quality: int,
    *,
    encoder: str,
    meta: OutputMetadata,
    icc: bytes | None,
    optimize: bool = False,
    progressive: bool = False,
) -> bytes:
    """JPEG of an L or RGB image. jpegli takes RGB only (and always subsamples 4:2:0), so
    greyscale, progressive and optimize go through libjpeg-turbo."""
    if encoder == "jpegli" and im.mode == "RGB" and not progressive and not optimize:
        data = pyjpegli.encode(im.tobytes(), im.width, im.height, quality=quality)
        if icc:
            data = data[:2] + _icc_segments(icc) + data[2:]
        return insert_jpeg_metadata(data, meta)
    params: dict[str, object] = {"quality": quality}
    if encoder in ("tuned", "jpegli"):
        tables = tuned_tables(quality)
        # Pillow scales given tables by libjpeg's quality formula: 50 leaves them as they are.
        params = {"qtables": [list(t) for t in tables[: 1 if im.mode == "L" else 2]], "quality": 50}
    buf = BytesIO()
    im.save(
        buf,
        "JPEG",
        **params,
        optimize=optimize,
        progressive=progressive,
        subsampling=2,  # 4:2:0: ~20% smaller than 4:4:4 and faster
        icc_profile=icc,
        comment=b"",  # otherwise Pillow copies the input's COM segment
    )
    return insert_jpeg_metadata(buf.getvalue(), meta)


def encode_webp(im: Image.Image, quality: int, *, meta: OutputMetadata, icc: bytes | None) -> bytes:
    buf = BytesIO()
    im.save(buf, "WEBP", quality=quality, method=WEBP_METHOD, icc_profile=icc or b"", exif=meta.exif, xmp=meta.xmp)
    return buf.getvalue()


def encode_avif(
    im: Image.Image, quality: int, *, meta: OutputMetadata, icc: bytes | None, speed: int = AVIF_SPEED
) -> bytes:
    """AVIF (libaom through Pillow), 4:2:0, tuned for SSIMULACRA2, one thread: the workers are
    one process per core."""
    buf = BytesIO()
    im.save(
        buf,
        "AVIF",
        quality=quality,
        speed=speed,
        max_threads=1,
        advanced=[("tune", AVIF_TUNE)],
        icc_profile=icc or b"",
        exif=meta.exif,
        xmp=meta.xmp,
    )
    return buf.getvalue()


# --- graphics --------------------------------------------------------------------------------

_FLAT_ROWS: Final = 96


def flat_fraction(im: Image.Image) -> float:
    """The share of pixels equal to their left neighbour, on up to 96 evenly spaced rows:
    ~0 for photographs (noise), most of the image for logos, line art and charts."""
    if im.width < 2:
        return 1.0
    step = max(1, im.height // _FLAT_ROWS)
    rows = np.asarray(im)[::step]
    same = rows[:, 1:] == rows[:, :-1]
    if same.ndim == 3:
        same = same.all(axis=2)
    return float(same.mean())


def palette_image(im: Image.Image) -> Image.Image | None:
    """`im` (L, LA, RGB or RGBA) as an exact palette image when it has at most 256 colours
    (transparency in the palette), else None."""
    if im.getcolors(256) is None:
        return None
    pixels = np.asarray(im)
    if pixels.ndim == 2:
        keys = pixels.astype(np.uint32)
    else:
        shifted = [
            pixels[..., band].astype(np.uint32) << (8 * (pixels.shape[2] - 1 - band)) for band in range(pixels.shape[2])
        ]
        keys = shifted[0]
        for part in shifted[1:]:
            keys = keys | part
    colours, indices = np.unique(keys.ravel(), return_inverse=True)
    bands = len(im.getbands())
    table = np.zeros((len(colours), 4), dtype=np.uint8)
    for band in range(bands):
        table[:, band] = (colours >> (8 * (bands - 1 - band))) & 0xFF
    if im.mode in ("L", "LA"):
        alpha = table[:, 1].copy() if im.mode == "LA" else np.full(len(colours), 255, np.uint8)
        rgba = np.stack([table[:, 0], table[:, 0], table[:, 0], alpha], axis=1)
    elif im.mode == "RGB":
        rgba = table.copy()
        rgba[:, 3] = 255
    else:
        rgba = table
    out = Image.fromarray(indices.reshape(im.height, im.width).astype(np.uint8), "L").convert("P")
    out.putpalette(rgba[:, :3].tobytes(), "RGB")
    if (rgba[:, 3] != 255).any():
        out.info["transparency"] = rgba[:, 3].tobytes()
    return out


def encode_png(im: Image.Image, *, meta: OutputMetadata, icc: bytes | None, palette: Image.Image | None) -> bytes:
    """Lossless PNG: the palette image when there is one (1, 2, 4 or 8 bits per pixel),
    else the pixels as they are, at zlib's best compression."""
    source = palette if palette is not None else im
    buf = BytesIO()
    params: dict[str, object] = {"optimize": True}
    if icc and palette is None:
        params["icc_profile"] = icc
    if meta.exif:
        params["exif"] = meta.exif
    if "transparency" in source.info:
        params["transparency"] = source.info["transparency"]
    if meta.xmp:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_itxt("XML:com.adobe.xmp", meta.xmp.decode("utf-8"))
        params["pnginfo"] = info
    source.save(buf, "PNG", **params)
    return buf.getvalue()


# Lossless monochrome AVIF, the last resort for greyscale graphics (bench/results.md, Never
# larger): at libaom speed 5 its palette tools beat CCITT Group 4 on bilevel line art, which
# no other web format's lossless coding does (~3.5 s per MP at speed 5, so only up to
# _AVIF_EFFORT_PIXELS; above that speed 6, several times faster, ~5-15% larger).
AVIF_LOSSLESS_SPEED: Final = 5
_AVIF_EFFORT_PIXELS: Final = 4_000_000


def encode_avif_lossless(im: Image.Image, *, meta: OutputMetadata) -> bytes | None:
    """Lossless monochrome (4:0:0) AVIF of an L image, or None when the decoded file is not
    exactly the pixels (never a lossy file under a lossless name). Colour is not offered:
    Pillow's AVIF at quality 100 goes through YUV, which is not exact for RGB."""
    if im.mode != "L":
        return None
    speed = AVIF_LOSSLESS_SPEED if im.width * im.height <= _AVIF_EFFORT_PIXELS else AVIF_LOSSLESS_SPEED + 1
    buf = BytesIO()
    im.save(buf, "AVIF", quality=100, speed=speed, subsampling="4:0:0", max_threads=1, exif=meta.exif, xmp=meta.xmp)
    data = buf.getvalue()
    with Image.open(BytesIO(data)) as decoded:
        decoded.load()
        same = decoded.convert("L").tobytes() == im.tobytes()
    return data if same else None


def encode_webp_lossless(im: Image.Image, *, meta: OutputMetadata, icc: bytes | None, effort: bool = False) -> bytes:
    """Lossless WebP. For lossless, quality is the effort: method 4 / quality 50 is libwebp's
    middle ground; `effort` (method 5 / quality 90, ~5x the time) saves up to a quarter more
    on bilevel pages and is used only when nothing else beats the input."""
    if im.mode not in ("RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in im.mode else "RGB")
    method, quality = (5, 90) if effort else (4, 50)
    buf = BytesIO()
    im.save(
        buf,
        "WEBP",
        lossless=True,
        quality=quality,
        method=method,
        icc_profile=icc or b"",
        exif=meta.exif,
        xmp=meta.xmp,
        exact=False,
    )
    return buf.getvalue()
