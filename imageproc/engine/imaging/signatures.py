"""Which files are images we accept, decided from their first bytes.

One list for the download (the HTTP client sniffs a response before keeping it) and for the
decoder (compress() explains a file Pillow could not identify). `sniff_format` is the public
entry point; it never parses more than a few header bytes.
"""

from __future__ import annotations

from typing import Final

# ISO base media file format (HEIF, AVIF): a `ftyp` box holding a major brand and a list of
# compatible brands. Video brands (isom, mp41, qt) are not images and are not listed.
AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})
HEIC_BRANDS: Final = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
HEIF_BRANDS: Final = frozenset({b"mif1", b"msf1", b"mif2", b"miaf"})

# (prefix, media type, Pillow format). Longest first where one prefix starts another.
_PREFIXES: Final[tuple[tuple[bytes, str, str], ...]] = (
    (b"\xff\xd8\xff", "image/jpeg", "JPEG"),  # also MPO: a JPEG followed by more pictures
    (b"\x89PNG\r\n\x1a\n", "image/png", "PNG"),
    (b"GIF87a", "image/gif", "GIF"),
    (b"GIF89a", "image/gif", "GIF"),
    (b"II*\x00", "image/tiff", "TIFF"),
    (b"MM\x00*", "image/tiff", "TIFF"),
    (b"II+\x00", "image/tiff", "TIFF"),  # BigTIFF
    (b"MM\x00+", "image/tiff", "TIFF"),  # BigTIFF
)
# BITMAPCOREHEADER, OS/2 v2 (16 and 64), INFO, v2, v3, v4, v5 headers.
_BMP_HEADER_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})

# Formats we refuse, to say "not accepted" rather than "not an image".
REFUSED_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
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
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
)

_MEDIA_TYPES: Final[dict[str, str]] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "TIFF": "image/tiff",
    "BMP": "image/bmp",
    "WEBP": "image/webp",
    "AVIF": "image/avif",
    "HEIF": "image/heic",
}


def _ftyp_brands(data: bytes) -> set[bytes]:
    if data[4:8] != b"ftyp" or len(data) < 16:
        return set()
    size = int.from_bytes(data[0:4], "big")
    end = min(len(data), size if 16 <= size <= 4096 else 16)
    brands = {data[8:12]}
    brands.update(data[offset : offset + 4] for offset in range(16, end - 3, 4))
    return brands


def sniff_pillow_format(data: bytes) -> str | None:
    """The Pillow format name of an accepted image ("JPEG", "PNG", "GIF", "TIFF", "BMP",
    "WEBP", "AVIF", "HEIF"), or None. MPO files answer "JPEG" (they start as one)."""
    for prefix, _, name in _PREFIXES:
        if data.startswith(prefix):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and len(data) >= 26 and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    brands = _ftyp_brands(data)
    if brands & AVIF_BRANDS:
        return "AVIF"
    if brands & (HEIC_BRANDS | HEIF_BRANDS):
        return "HEIF"
    return None


def sniff_format(data: bytes) -> str | None:
    """The media type of `data` if it starts like an image format compress() accepts:
    "image/jpeg" (MPO included), "image/png", "image/gif", "image/webp", "image/bmp",
    "image/tiff" (BigTIFF included), "image/avif" or "image/heic"; None otherwise.

    Reads at most the first 4 KiB. This is a signature check, not validation: compress()
    still refuses a file that only starts like an image."""
    name = sniff_pillow_format(data[:4096])
    return _MEDIA_TYPES[name] if name is not None else None


def refused_format(data: bytes) -> str | None:
    """The name of a known image format we do not accept, if `data` starts like one."""
    head = data[:32]
    for signature, name in REFUSED_SIGNATURES:
        if head.startswith(signature):
            return name
    if _ftyp_brands(data[:4096]):
        return "this ISO media"  # an ftyp box, but no image brand we take
    if b"<svg" in data[:1024].lower():
        return "SVG"
    return None
