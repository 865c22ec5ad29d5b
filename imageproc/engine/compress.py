"""Re-encode untrusted images as smaller files: JPEG, WebP or AVIF, or keep something better.

No Django imports: callers pass a CompressOptions built from settings or the request.
Call configure_pillow() once in every worker process before the first compress().
The parts live in imageproc.engine.imaging: signatures (what is accepted, shared with the
download), metadata, encoders, quality (quality="auto").
"""

from __future__ import annotations

import dataclasses
import functools
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Final, cast

import pillow_heif
from PIL import AvifImagePlugin, Image, ImageCms, ImageFile, UnidentifiedImageError

from imageproc.engine.imaging import encoders, metadata
from imageproc.engine.imaging import quality as auto_quality
from imageproc.engine.imaging.encoders import FORMATS, JPEG_ENCODERS, Format
from imageproc.engine.imaging.metadata import NO_RIGHTS, OutputMetadata, Rights
from imageproc.engine.imaging.signatures import refused_format, sniff_format, sniff_pillow_format

__all__ = [
    "ALLOWED_INPUT_FORMATS",
    "CANDIDATES",
    "DEFAULT_JPEG_ENCODER",
    "OUTPUT_FORMATS",
    "QUALITY_LEVELS",
    "CompressOptions",
    "CompressResult",
    "DecodedImage",
    "ImageRejected",
    "compress",
    "configure_pillow",
    "decode_source",
    "encode_source",
    "sniff_format",
]

# AVIF before HEIF: Image.open tries them in this order, and both read `ftyp` files.
ALLOWED_INPUT_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF")
OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "webp", "avif", "auto")
QUALITY_LEVELS: tuple[str, ...] = ("auto", "auto:high", "auto:good", "auto:eco")
# What a result can be: the lossy re-encoding; the input's own encoding (metadata removed);
# a lossless encoding of the pixels; the lossy re-encoding at the highest quality that is
# smaller than the input (only when nothing else is).
CANDIDATES: tuple[str, ...] = (
    "reencoded",
    "original",
    "lossless_png",
    "lossless_webp",
    "lossless_avif",
    "reencoded_to_fit",
)
DEFAULT_JPEG_ENCODER: Final = "tuned"  # chosen by measurement: bench/results.md, JPEG encoders
# What Image.open may try: MPO has no opener of its own (the JPEG one returns it).
_OPEN_FORMATS: Final = tuple(f for f in ALLOWED_INPUT_FORMATS if f != "MPO")
_WEB_ORIGINALS: Final = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "AVIF"})
_AUTO_FORMATS: Final = ("jpeg", "webp", "avif")
# A share of pixels equal to their neighbour above this marks a graphic (logo, chart, line art).
_FLAT_GRAPHIC: Final = 0.5

pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False, decode_threads=1)


@dataclass(frozen=True)
class CompressOptions:
    """How to re-encode an image. Invalid values raise ValueError at construction.

    quality: 1..95, or "auto" / "auto:high" / "auto:good" (= "auto") / "auto:eco": per
        image, the lowest quality whose perceptual score (SSIMULACRA2 scale) meets the
        level's target (imaging.quality.LEVELS). None: 50, or "auto" for output_format="auto".
    output_format: "jpeg", "webp", "avif", or "auto": the smallest of the three at the
        quality target (needs an automatic quality).
    keep_copyright: EXIF Artist and Copyright and the XMP rights properties go into the output.
    jpeg_encoder: "tuned" (default: libjpeg-turbo with jpegli's quantization tables, the
        quality mapped to score as libjpeg-turbo's own tables do), "turbo" (the encoder
        before, standard tables) or "jpegli" (pyjpegli; RGB only, 2x slower).
    avif_speed: libaom's speed, 0 (slowest, smallest) .. 10.
    """

    quality: int | str | None = None
    output_format: str = "jpeg"
    max_pixels: int = 50_000_000
    optimize: bool = False
    progressive: bool = False
    keep_copyright: bool = True
    jpeg_encoder: str = DEFAULT_JPEG_ENCODER
    avif_speed: int = encoders.AVIF_SPEED

    def __post_init__(self) -> None:
        # bool is an int subclass: quality=True is a caller bug, not quality 1.
        q = self.quality
        if isinstance(q, str):
            if q not in QUALITY_LEVELS:
                raise ValueError(f"quality must be 1..95 or one of {QUALITY_LEVELS}, got {q!r}")
        elif q is not None:
            if isinstance(q, bool) or not isinstance(q, int):
                raise ValueError(f"quality must be an int or one of {QUALITY_LEVELS}, got {q!r}")
            if not 1 <= q <= 95:
                raise ValueError(f"quality must be between 1 and 95, got {q}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
        if self.output_format == "auto" and isinstance(q, int):
            raise ValueError("output_format 'auto' needs an automatic quality (None or 'auto...'), got a number")
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int):
            raise ValueError(f"max_pixels must be an int, got {self.max_pixels!r}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.jpeg_encoder not in JPEG_ENCODERS:
            raise ValueError(f"jpeg_encoder must be one of {JPEG_ENCODERS}, got {self.jpeg_encoder!r}")
        if isinstance(self.avif_speed, bool) or not isinstance(self.avif_speed, int) or not 0 <= self.avif_speed <= 10:
            raise ValueError(f"avif_speed must be an int 0..10, got {self.avif_speed!r}")
        if not isinstance(self.keep_copyright, bool):
            raise ValueError(f"keep_copyright must be a bool, got {self.keep_copyright!r}")

    @property
    def effective_quality(self) -> int | str:
        """The quality asked for: a number, or a level name ("auto:good" for "auto")."""
        if self.quality is None:
            return "auto:good" if self.output_format == "auto" else 50
        if isinstance(self.quality, str):
            return auto_quality.LEVELS_ALIAS.get(self.quality, self.quality)
        return self.quality


@dataclass(frozen=True)
class CompressResult:
    """The encoded image and what callers need to store and serve it."""

    data: bytes
    output_format: str  # "jpeg" | "webp" | "avif", or "png" | "gif" for a kept or lossless graphic
    content_type: str  # "image/jpeg" | "image/webp" | "image/avif" | "image/png" | "image/gif"
    extension: str  # "jpg" | "webp" | "avif" | "png" | "gif"
    width: int  # as displayed, i.e. after EXIF orientation
    height: int
    input_format: str  # Pillow's format name of the input, e.g. "JPEG", "PNG", "MPO", "HEIF"
    kept_original: bool  # the input's own encoding was returned (candidate == "original")
    candidate: str = "reencoded"  # one of CANDIDATES
    quality_chosen: int | None = None  # the encoder quality used (None for lossless/original)
    score: float | None = None  # quality="auto": the predicted SSIMULACRA2 reached
    encoder: str = ""  # "tuned" | "turbo" | "jpegli" | "libwebp" | "libaom" | "zlib" | "" (original)
    input_bytes: int = 0

    @property
    def larger_than_input(self) -> bool:
        """True only when no candidate was smaller than the input (none of the benchmark's
        files: bilevel line art in CCITT G4 TIFF gets monochrome lossless AVIF)."""
        return len(self.data) > self.input_bytes


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
    RuntimeError,  # pillow-heif and the AVIF plugin
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

_TRANSPOSE_FOR_ORIENTATION: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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
    # One coding thread per worker process: the workers are one process per core.
    AvifImagePlugin.DEFAULT_MAX_THREADS = 1
    pillow_heif.options.DECODE_THREADS = 1
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is enabled; truncated images would be accepted")


@dataclass
class _Source:
    """The decoded input, normalised: L, LA, RGB or RGBA pixels as stored."""

    data: bytes
    input_format: str
    pixels: Image.Image
    icc: bytes | None
    orientation: int
    rights: Rights
    frames: int
    has_metadata: bool  # EXIF or XMP in the input
    resized: bool = False  # pixels smaller than the input's (a rendition): no "original"
    # A JPEG decoded at a DCT scale: the picture's exact size in those pixels (4619 px at 1/2
    # is 2309.5, decoded as 2310: the last column is half a column). A resize from it reads
    # this box, or the rendition is shifted by up to half a pixel.
    extent: tuple[float, float] | None = None

    def resized_to(self, pixels: Image.Image) -> _Source:
        """The same source with other (smaller) pixels: what a rendition encodes."""
        return dataclasses.replace(self, pixels=pixels, resized=True)

    @functools.cached_property
    def upright(self) -> Image.Image:
        if self.orientation == 1:
            return self.pixels
        return self.pixels.transpose(_TRANSPOSE_FOR_ORIENTATION[self.orientation])

    @functools.cached_property
    def flattened(self) -> Image.Image:
        """For JPEG: transparency onto white, as stored (the orientation goes in EXIF)."""
        im = self.pixels
        return _flatten_on_white(im) if im.mode in ("LA", "RGBA") else im

    @functools.cached_property
    def upright_rgb(self) -> Image.Image:
        """For WebP and AVIF: RGB(A), upright (viewers disagree on their EXIF orientation)."""
        im = self.upright
        if im.mode in ("L", "LA"):
            im = im.convert("RGBA" if im.mode == "LA" else "RGB")
        return im

    @property
    def displayed_size(self) -> tuple[int, int]:
        width, height = self.pixels.size
        return (height, width) if self.orientation in (5, 6, 7, 8) else (width, height)


# Public name for the engine's other modules (imageproc.engine.renditions).
DecodedImage = _Source


@dataclass(frozen=True)
class _Candidate:
    name: str
    data: bytes
    fmt: Format
    quality: int | None = None
    score: float | None = None
    encoder: str = ""


def compress(data: bytes, options: CompressOptions | None = None) -> CompressResult:
    """Re-encode `data` (an untrusted image) and return the smallest good result.

    - Only ALLOWED_INPUT_FORMATS are parsed at all; the pixel limit is checked from the
      header before any pixel data is decoded. MPO gives its first picture (a JPEG);
      AVIF and HEIC/HEIF are decoded like the others, upright, in their colours.
    - Animated inputs give their first frame; the size is never reduced.
    - EXIF orientation is honoured: JPEG output carries it in EXIF (no pixel work); WebP,
      AVIF and PNG output is transposed upright and carries no orientation.
    - Metadata: by default only the copyright notice survives (EXIF Artist and Copyright,
      the XMP rights properties); keep_copyright=False drops it too. GPS, camera data,
      comments and all other XMP are always dropped.
    - An embedded ICC profile is kept when it matches the output's colour space;
      CMYK (and LAB) is converted to sRGB, through its profile when it has one.
    - Transparency is flattened onto white for JPEG and kept for WebP, AVIF and PNG.
    - Never larger than the input: besides the re-encoding, the input's own encoding
      (for JPEG, PNG, GIF, WebP; metadata removed without re-encoding) and, for graphics
      or when nothing else is smaller, a lossless encoding (palette PNG for JPEG output,
      lossless WebP otherwise) are candidates; the smallest wins, ties going to the
      original, then to lossless. CompressResult.candidate says which won.

    Raises ImageRejected for any problem with the input; ValueError only for a bad
    CompressOptions.
    """
    opts = options if options is not None else CompressOptions()
    return encode_source(decode_source(data, opts), opts)


def _wanted(opts: CompressOptions) -> list[str]:
    return list(_AUTO_FORMATS) if opts.output_format == "auto" else [opts.output_format]


def decode_source(
    data: bytes, opts: CompressOptions, *, draft: Callable[[tuple[int, int]], tuple[int, int] | None] | None = None
) -> _Source:
    """Open, check and decode `data` under the limits of `opts`. `draft`, given the stored
    size from the header (after every check), may return a smaller size to decode at:
    JPEG decodes at the smallest DCT scale (1/2, 1/4, 1/8) that still covers it
    (imageproc.engine.renditions); other formats ignore it."""
    wanted = _wanted(opts)
    with _open(data) as im:
        input_format = _check_header(im, data, opts, wanted)
        header_size = im.size
        extent = None
        if draft is not None and (size := draft(header_size)) is not None:
            drafted = im.draft(None, size)
            if drafted is not None:
                extent = drafted[1][2:]  # the picture's exact size in decoded pixels
        orientation, exif = _decode(im)
        rights = metadata.read_rights(im, exif) if opts.keep_copyright else NO_RIGHTS
        pixels, icc = _prepare_pixels(im)
        frames = getattr(im, "n_frames", 1)
        has_metadata = bool(im.info.get("exif") or im.info.get("xmp"))
    return _Source(
        data,
        input_format,
        pixels,
        icc,
        orientation,
        rights,
        frames if isinstance(frames, int) else 1,
        has_metadata,
        resized=pixels.size != header_size,
        extent=extent if pixels.size != header_size else None,
    )


def encode_source(source: _Source, opts: CompressOptions) -> CompressResult:
    """The smallest good encoding of a decoded source (compress() after the decode).
    A resized source (a rendition) has no "original" candidate; the never-larger rule
    still compares with the input's bytes."""
    data = source.data
    formats = [f for f in _wanted(opts) if max(source.pixels.size) <= FORMATS[f].max_side]

    candidates = [_lossy(source, opts, formats)]
    original = _original(source)
    if original is not None:
        candidates.append(original)
    best = min(candidates, key=lambda c: len(c.data))
    if _is_graphic(source.pixels) or (len(best.data) >= len(data) and best.name != "original"):
        candidates.append(_lossless(source, "png" if opts.output_format == "jpeg" else "webp"))
    # Ties go to the better picture: the original, then lossless, then the re-encoding.
    order = {"original": 0, "lossless_png": 1, "lossless_webp": 1, "lossless_avif": 1, "reencoded": 2}
    best = min(candidates, key=lambda c: (len(c.data), order[c.name]))
    if len(best.data) >= len(data) and best.name != "original":
        # Nothing is smaller yet (bilevel line art whose CCITT G4 TIFF beats PNG and WebP,
        # photographs in AVIF or HEIC): lossless WebP at a higher effort, monochrome
        # lossless AVIF for greyscale, and the lossy encoding at the highest quality that
        # fits under the input.
        last = [best, _lossless(source, "webp", effort=True)]
        if source.upright.mode == "L" and max(source.upright.size) <= FORMATS["avif"].max_side:
            # Greyscale line art (a fax, a drawing) that Group 4 TIFF codes best: monochrome AVIF.
            avif = encoders.encode_avif_lossless(source.upright, meta=_meta(source, "avif"))
            if avif is not None:
                last.append(_Candidate("lossless_avif", avif, FORMATS["avif"], encoder="libaom"))
        fitted = _reencode_to_fit(source, opts, formats[0] if formats else "jpeg", len(data))
        if fitted is not None:
            last.append(fitted)
        best = min(last, key=lambda c: (len(c.data), order.get(c.name, 3)))

    width, height = source.displayed_size
    return CompressResult(
        data=best.data,
        output_format=best.fmt.name,
        content_type=best.fmt.content_type,
        extension=best.fmt.extension,
        width=width,
        height=height,
        input_format=source.input_format,
        kept_original=best.name == "original",
        candidate=best.name,
        quality_chosen=best.quality,
        score=best.score,
        encoder=best.encoder,
        input_bytes=len(data),
    )


# --- candidates ------------------------------------------------------------------------------


def _meta(source: _Source, fmt: str) -> OutputMetadata:
    return metadata.output_metadata(source.orientation if fmt == "jpeg" else 1, source.rights)


def _pixels_for(source: _Source, fmt: str) -> Image.Image:
    return source.flattened if fmt == "jpeg" else source.upright_rgb


def _encoder_name(fmt: str, opts: CompressOptions, im: Image.Image) -> str:
    if fmt == "webp":
        return "libwebp"
    if fmt == "avif":
        return "libaom"
    if opts.jpeg_encoder == "jpegli":
        uses_jpegli = im.mode == "RGB" and not (opts.optimize or opts.progressive)
        return "jpegli" if uses_jpegli else "tuned"
    return opts.jpeg_encoder


def _encode_function(
    fmt: str, opts: CompressOptions, meta: OutputMetadata, icc: bytes | None
) -> Callable[[Image.Image, int], bytes]:
    if fmt == "jpeg":
        return lambda im, q: encoders.encode_jpeg(
            im,
            q,
            encoder=opts.jpeg_encoder,
            meta=meta,
            icc=_matching_icc(icc, im.mode),
            optimize=opts.optimize,
            progressive=opts.progressive,
        )
    if fmt == "webp":
        return lambda im, q: encoders.encode_webp(im, q, meta=meta, icc=_matching_icc(icc, im.mode))
    return lambda im, q: encoders.encode_avif(im, q, meta=meta, icc=_matching_icc(icc, im.mode), speed=opts.avif_speed)


def _lossy(source: _Source, opts: CompressOptions, formats: list[str]) -> _Candidate:
    quality = opts.effective_quality
    if isinstance(quality, int):
        fmt = formats[0]
        im = _pixels_for(source, fmt)
        data = _encode_function(fmt, opts, _meta(source, fmt), source.icc)(im, quality)
        return _Candidate("reencoded", data, FORMATS[fmt], quality, None, _encoder_name(fmt, opts, im))

    target = auto_quality.target_for(quality)
    no_meta = OutputMetadata(b"", b"")
    choices = []
    for fmt in formats:
        im = _pixels_for(source, fmt)
        sample = auto_quality.sample(im, fmt)
        choice = auto_quality.choose_quality(sample, _encode_function(fmt, opts, no_meta, None), fmt, target)
        estimated = choice.sample_bytes * (im.width * im.height) / (sample.width * sample.height)
        choices.append((estimated, fmt, choice))
    _, fmt, choice = min(choices, key=lambda c: c[0])
    im = _pixels_for(source, fmt)
    data = _encode_function(fmt, opts, _meta(source, fmt), source.icc)(im, choice.quality)
    return _Candidate(
        "reencoded", data, FORMATS[fmt], choice.quality, round(choice.score, 1), _encoder_name(fmt, opts, im)
    )


def _reencode_to_fit(source: _Source, opts: CompressOptions, fmt: str, limit: int) -> _Candidate | None:
    """The lossy encoding at the highest quality (10..94) smaller than `limit` bytes, if any."""
    im = _pixels_for(source, fmt)
    encode = _encode_function(fmt, opts, _meta(source, fmt), source.icc)
    low, high = 10, 94
    best: tuple[int, bytes] | None = None
    while low <= high:
        quality = (low + high) // 2
        data = encode(im, quality)
        if len(data) < limit:
            best = (quality, data)
            low = quality + 1
        else:
            high = quality - 1
    if best is None:
        return None
    return _Candidate("reencoded_to_fit", best[1], FORMATS[fmt], best[0], None, _encoder_name(fmt, opts, im))


def _original(source: _Source) -> _Candidate | None:
    """The input's own encoding without its metadata, where it is a web format that shows
    the same picture: JPEG, MPO's first picture, single-frame WebP, PNG and GIF (those two
    only when no EXIF orientation applies: browsers disagree on it there), and AVIF
    without metadata."""
    fmt = source.input_format
    if fmt not in _WEB_ORIGINALS or source.resized:
        return None
    data = source.data
    if fmt in ("JPEG", "MPO"):
        if fmt == "MPO":
            data = metadata.mpo_first_picture(data)
        return _Candidate("original", metadata.strip_jpeg(data, _meta(source, "jpeg")), FORMATS["jpeg"])
    if source.frames != 1:
        return None
    if fmt == "AVIF":
        # Browsers apply AVIF's own rotation; one with metadata (or an EXIF orientation,
        # which Pillow reports as EXIF) is not kept: its boxes cannot be dropped in place.
        if source.frames != 1 or source.has_metadata:
            return None
        return _Candidate("original", data, FORMATS["avif"])
    if fmt == "WEBP":
        meta = metadata.output_metadata(source.orientation, source.rights)
        has_alpha = source.pixels.mode in ("LA", "RGBA")
        stripped = metadata.strip_webp(data, meta, source.pixels.size, has_alpha)
        return _Candidate("original", stripped, FORMATS["webp"])
    if source.orientation != 1:
        return None
    if fmt == "PNG":
        png = metadata.strip_png(data, metadata.output_metadata(1, source.rights))
        return _Candidate("original", png, FORMATS["png"]) if png is not None else None
    gif = metadata.strip_gif(data)
    return _Candidate("original", gif, FORMATS["gif"]) if gif is not None else None


def _is_graphic(im: Image.Image) -> bool:
    # Greyscale photographs use most of their 256 levels; graphics few colours or flat areas.
    few = 64 if im.mode in ("L", "LA") else 256
    return im.getcolors(few) is not None or encoders.flat_fraction(im) >= _FLAT_GRAPHIC


def _lossless(source: _Source, fmt: str, *, effort: bool = False) -> _Candidate:
    im = source.upright
    meta = _meta(source, fmt)
    if fmt == "webp" and max(im.size) <= FORMATS["webp"].max_side:
        icc = _matching_icc(source.icc, "RGB" if im.mode in ("L", "LA") else im.mode)
        data = encoders.encode_webp_lossless(
            im, meta=meta, icc=icc if im.mode not in ("L", "LA") else None, effort=effort
        )
        return _Candidate("lossless_webp", data, FORMATS["webp"], encoder="libwebp")
    palette = encoders.palette_image(im)
    icc = _matching_icc(source.icc, im.mode)
    if palette is not None and icc is not None and metadata_colour_space(icc) != b"RGB ":
        icc = None  # a grey profile does not describe RGB palette entries
    data = encoders.encode_png(im, meta=meta, icc=icc, palette=palette)
    return _Candidate("lossless_png", data, FORMATS["png"], encoder="zlib")


def metadata_colour_space(icc: bytes) -> bytes:
    return _icc_colour_space(icc)


# --- opening and decoding --------------------------------------------------------------------


def _open(data: bytes) -> ImageFile.ImageFile:
    try:
        return Image.open(BytesIO(data), formats=_OPEN_FORMATS)
    except UnidentifiedImageError as exc:
        raise _unidentified(data) from exc
    except _BOMB_ERRORS as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except _DECODE_ERRORS as exc:
        raise ImageRejected("decode_error", f"cannot read the image header: {exc}") from exc


def _unidentified(data: bytes) -> ImageRejected:
    accepted = sniff_pillow_format(data)
    if accepted is not None:
        return ImageRejected("decode_error", f"the {accepted} header is corrupt")
    refused = refused_format(data)
    if refused is not None:
        return ImageRejected("unsupported_format", f"{refused} images are not accepted")
    return ImageRejected("not_an_image", "the data is not a recognised image file")


def _check_header(im: ImageFile.ImageFile, data: bytes, opts: CompressOptions, wanted: list[str]) -> str:
    input_format = im.format or ""
    if input_format not in ALLOWED_INPUT_FORMATS:
        raise ImageRejected("unsupported_format", f"{input_format or 'this'} images are not accepted")
    width, height = im.size
    if width * height > opts.max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"the image is {width}x{height} ({width * height} pixels); the limit is {opts.max_pixels} pixels",
        )
    fits = [f for f in wanted if max(width, height) <= FORMATS[f].max_side]
    if not fits:
        out = FORMATS[wanted[0]]
        raise ImageRejected(
            "too_many_pixels",
            f"the image is {width}x{height}; {out.pillow_format} allows at most {out.max_side} pixels per side",
        )
    if input_format in ("JPEG", "MPO"):
        _check_jpeg_scans(data)
    return input_format


def _check_jpeg_scans(data: bytes) -> None:
    # FF DA cannot occur inside entropy-coded data, so this C-speed count is an upper
    # bound; the exact marker walk is needed only for files that look suspicious.
    if data.count(b"\xff\xda") <= _MAX_JPEG_SCANS:
        return
    scans = 0
    for segment in metadata.jpeg_segments(data):
        if segment[0] == 0xDA:
            scans += 1
        elif segment[0] == 0xD9:
            break  # an MPO's next picture starts after the first one's EOI
    if scans > _MAX_JPEG_SCANS:
        raise ImageRejected(
            "decode_error",
            f"the JPEG has {scans} scans; at most {_MAX_JPEG_SCANS} are accepted",
        )


def _decode(im: ImageFile.ImageFile) -> tuple[int, Image.Exif | None]:
    """Decode the pixels (first frame); return the EXIF orientation (1..8) and the EXIF."""
    try:
        im.load()
    except _BOMB_ERRORS as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except _DECODE_ERRORS as exc:
        raise ImageRejected("decode_error", f"the image data is corrupt: {exc}") from exc
    try:
        exif = im.getexif()
        orientation = exif.get(metadata.ORIENTATION_TAG, 1)
    except _DECODE_ERRORS:
        # Broken EXIF is common and harmless to the pixels: treat it as absent.
        return 1, None
    return (orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1), exif


def _prepare_pixels(im: Image.Image) -> tuple[Image.Image, bytes | None]:
    """Return the pixels as L, LA, RGB or RGBA and the embedded ICC profile, if any."""
    raw_icc = im.info.get("icc_profile")
    icc = raw_icc if isinstance(raw_icc, bytes) and raw_icc and len(raw_icc) <= _MAX_ICC_BYTES else None
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
    return im, icc


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
    if icc is None:
        return None
    wanted = b"GRAY" if mode in ("L", "LA") else b"RGB "
    return icc if _icc_colour_space(icc) == wanted else None
