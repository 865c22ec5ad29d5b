"""Metadata: what survives into an output (orientation, and by default the copyright
notice) and the removal of everything else from an input kept as it is.

Kept originals are rewritten at the container level (JPEG segments, WebP and PNG chunks, GIF
blocks): the compressed image data is copied byte for byte.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

import defusedxml.ElementTree as SafeElementTree
from defusedxml import DefusedXmlException
from PIL import Image

ORIENTATION_TAG: Final = 0x0112
ARTIST_TAG: Final = 0x013B
COPYRIGHT_TAG: Final = 0x8298

_MAX_TEXT: Final = 2000  # characters kept of one copyright field; longer is abuse
_MAX_XMP_BYTES: Final = 1 << 20  # XMP larger than this is not parsed for rights

_NS: Final[dict[str, str]] = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmpRights": "http://ns.adobe.com/xap/1.0/rights/",
    "xml": "http://www.w3.org/XML/1998/namespace",
}
# The XMP properties carried over: (prefix, name, kind). "alt" is a language alternative,
# "seq"/"bag" ordered/unordered lists, "text" a simple value.
_XMP_RIGHTS: Final[tuple[tuple[str, str, str], ...]] = (
    ("dc", "creator", "seq"),
    ("dc", "rights", "alt"),
    ("xmpRights", "Marked", "text"),
    ("xmpRights", "WebStatement", "text"),
    ("xmpRights", "UsageTerms", "alt"),
    ("xmpRights", "Owner", "bag"),
    ("xmpRights", "Certificate", "text"),
)
_XMP_JPEG_HEADER: Final = b"http://ns.adobe.com/xap/1.0/\x00"


@dataclass(frozen=True)
class Rights:
    """Copyright metadata of an input, to be written into its output."""

    artist: str | None = None
    copyright: str | None = None
    # (prefix, name, kind, ((lang or "", value), ...)) for each XMP rights property present
    xmp: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.artist or self.copyright or self.xmp)


NO_RIGHTS: Final = Rights()


@dataclass(frozen=True)
class OutputMetadata:
    """What an output carries: an EXIF block (orientation, artist, copyright) and XMP."""

    exif: bytes  # b"Exif\0\0" + TIFF structure, or b"" for none
    xmp: bytes  # an XMP packet, or b""

    @property
    def exif_tiff(self) -> bytes:
        """The EXIF block without its "Exif\\0\\0" header (WebP, PNG and AVIF want it so)."""
        return self.exif[6:] if self.exif.startswith(b"Exif\x00\x00") else self.exif


def _clean(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", " ").strip()
    return value[:_MAX_TEXT] or None


def _exif_text(value: Any) -> Any:
    # Pillow reads EXIF ASCII as Latin-1; writers put UTF-8 there ("(c)" as C2 A9).
    if isinstance(value, str):
        try:
            return value.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return value
    return value


def read_rights(im: Image.Image, exif: Image.Exif | None) -> Rights:
    """The copyright metadata of a decoded image: EXIF Artist and Copyright, and the XMP
    rights properties. Broken metadata counts as absent."""
    artist = copyright_ = None
    if exif is not None:
        artist = _clean(_exif_text(exif.get(ARTIST_TAG)))
        copyright_ = _clean(_exif_text(exif.get(COPYRIGHT_TAG)))
    return Rights(artist, copyright_, _xmp_rights(_raw_xmp(im)))


def _raw_xmp(im: Image.Image) -> bytes | None:
    for key in ("xmp", "XML:com.adobe.xmp"):
        value = im.info.get(key)
        if isinstance(value, str):
            value = value.encode("utf-8")
        if isinstance(value, bytes) and value:
            return value
    tag = getattr(im, "tag_v2", None)  # TIFF: XMP is tag 700
    if tag is not None:
        try:
            value = tag.get(700)
        except Exception:  # a broken TIFF directory: no XMP
            return None
        if isinstance(value, bytes | str) and value:
            return value.encode("utf-8") if isinstance(value, str) else value
    return None


def _xmp_rights(raw: bytes | None) -> tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...]:
    if not raw or len(raw) > _MAX_XMP_BYTES:
        return ()
    start = raw.find(b"<x:xmpmeta")
    if start < 0:
        start = raw.find(b"<rdf:RDF")
    end_tag = b"</x:xmpmeta>" if raw[start : start + 10] == b"<x:xmpmeta" else b"</rdf:RDF>"
    end = raw.find(end_tag, start)
    if start < 0 or end < 0:
        return ()
    try:
        # defusedxml refuses DTDs and entities: no expansion bombs, no external fetches.
        root = SafeElementTree.fromstring(raw[start : end + len(end_tag)], forbid_dtd=True)
    except (SyntaxError, ValueError, DefusedXmlException):  # ParseError is a SyntaxError
        return ()
    found = []
    for prefix, name, kind in _XMP_RIGHTS:
        values = _xmp_property(root, f"{{{_NS[prefix]}}}{name}")
        if values:
            found.append((prefix, name, kind, values))
    return tuple(found)


def _xmp_property(root: Any, qname: str) -> tuple[tuple[str, str], ...]:
    rdf, lang = _NS["rdf"], f"{{{_NS['xml']}}}lang"
    values: list[tuple[str, str]] = []
    for description in root.iter(f"{{{rdf}}}Description"):
        attribute = _clean(description.get(qname))
        if attribute:
            values.append(("", attribute))
        for element in description.findall(qname):
            items = element.findall(f"./*/{{{rdf}}}li")
            if items:
                for item in items:
                    text = _clean(item.text)
                    if text:
                        values.append((_clean(item.get(lang)) or "", text))
            else:
                text = _clean(element.text) or _clean(element.get(f"{{{rdf}}}resource"))
                if text:
                    values.append(("", text))
    return tuple(values[:32])


def build_xmp(rights: Rights) -> bytes:
    """A minimal XMP packet holding only the rights properties."""
    if not rights.xmp:
        return b""
    properties = []
    for prefix, name, kind, values in rights.xmp:
        if kind == "text":
            properties.append(f"<{prefix}:{name}>{escape(values[0][1])}</{prefix}:{name}>")
            continue
        container = {"alt": "Alt", "seq": "Seq", "bag": "Bag"}[kind]
        items = "".join(
            f"<rdf:li xml:lang={quoteattr(lang or 'x-default')}>{escape(value)}</rdf:li>"
            if kind == "alt"
            else f"<rdf:li>{escape(value)}</rdf:li>"
            for lang, value in values
        )
        properties.append(f"<{prefix}:{name}><rdf:{container}>{items}</rdf:{container}></{prefix}:{name}>")
    packet = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        f'<rdf:RDF xmlns:rdf="{_NS["rdf"]}">'
        f'<rdf:Description rdf:about="" xmlns:dc="{_NS["dc"]}" xmlns:xmpRights="{_NS["xmpRights"]}">'
        + "".join(properties)
        + '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="r"?>'
    )
    return packet.encode("utf-8")


def output_metadata(orientation: int, rights: Rights) -> OutputMetadata:
    """EXIF holding the orientation (when not 1) and the artist and copyright; XMP rights."""
    exif = Image.Exif()
    if orientation != 1:
        exif[ORIENTATION_TAG] = orientation
    if rights.artist:
        exif[ARTIST_TAG] = rights.artist.encode("utf-8")  # ASCII tags carry UTF-8 in practice
    if rights.copyright:
        exif[COPYRIGHT_TAG] = rights.copyright.encode("utf-8")
    return OutputMetadata(exif.tobytes() if len(exif) else b"", build_xmp(rights))


# --- JPEG ----------------------------------------------------------------------------------


def jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int, int]]:
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


def _app1(payload: bytes) -> bytes:
    return b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload


def jpeg_metadata_segments(meta: OutputMetadata) -> bytes:
    """APP1 segments for `meta` (EXIF first, then XMP); b"" when there is nothing."""
    out = _app1(meta.exif) if meta.exif else b""
    if meta.xmp and len(meta.xmp) + len(_XMP_JPEG_HEADER) < 65_000:
        out += _app1(_XMP_JPEG_HEADER + meta.xmp)
    return out


def insert_jpeg_metadata(data: bytes, meta: OutputMetadata) -> bytes:
    """`data` (a JPEG of ours, with no metadata) with `meta`'s segments after SOI/JFIF."""
    segments = jpeg_metadata_segments(meta)
    if not segments:
        return data
    position = 2
    if data[2:4] == b"\xff\xe0":
        position = 4 + int.from_bytes(data[4:6], "big")
    return data[:position] + segments + data[position:]


def strip_jpeg(data: bytes, meta: OutputMetadata) -> bytes:
    """Drop metadata segments and bytes after EOI without touching the compressed image;
    add `meta`'s segments. Returns `data` itself if nothing had to change."""
    pieces: list[bytes] = []
    copied_to = 0
    pending = jpeg_metadata_segments(meta)
    changed = False
    saw_eoi = False
    for marker, start, payload_start, end in jpeg_segments(data):
        if pending and marker not in (0xD8, 0xE0):
            # JFIF requires its APP0 right after SOI, so EXIF goes after it.
            pieces += [data[copied_to:start], pending]
            copied_to = start
            pending = b""
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


def mpo_first_picture(data: bytes) -> bytes:
    """The first picture of an MPO file: the JPEG up to its first EOI."""
    for marker, _, _, end in jpeg_segments(data):
        if marker == 0xD9:
            return data[:end]
    return data


# --- WebP ----------------------------------------------------------------------------------

_WEBP_IMAGE_CHUNKS: Final = frozenset({b"VP8X", b"VP8 ", b"VP8L", b"ALPH", b"ANIM", b"ANMF", b"ICCP"})


def _riff_chunk(fourcc: bytes, payload: bytes) -> bytes:
    return fourcc + len(payload).to_bytes(4, "little") + payload + b"\x00" * (len(payload) & 1)


def strip_webp(data: bytes, meta: OutputMetadata, size: tuple[int, int], has_alpha: bool) -> bytes:
    """Drop EXIF, XMP and unknown chunks from a WebP file without re-encoding; add `meta`
    (which needs the extended format: a VP8X header is made for a simple file). Returns
    `data` itself if nothing changed."""
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
    if not chunks:
        return data
    extra = []
    if meta.exif:
        extra.append(_riff_chunk(b"EXIF", meta.exif_tiff))
    if meta.xmp:
        extra.append(_riff_chunk(b"XMP ", meta.xmp))
    if not chunks[0].startswith(b"VP8X"):
        if not extra:
            return b"RIFF" + (4 + sum(map(len, chunks))).to_bytes(4, "little") + b"WEBP" + b"".join(chunks)
        width, height = size
        header = bytes([0x10 if has_alpha else 0, 0, 0, 0])
        header += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        chunks.insert(0, _riff_chunk(b"VP8X", header))
    if len(chunks[0]) < 9:
        return data
    flags = chunks[0][8] & ~0x0C  # clear the EXIF (0x08) and XMP (0x04) flags
    flags |= (0x08 if meta.exif else 0) | (0x04 if meta.xmp else 0)
    if not changed and not extra and flags == chunks[0][8]:
        return data
    chunks[0] = chunks[0][:8] + bytes([flags]) + chunks[0][9:]
    body = b"WEBP" + b"".join(chunks + extra)
    return b"RIFF" + len(body).to_bytes(4, "little") + body


# --- PNG -----------------------------------------------------------------------------------

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
# Chunks that decoding and colour need. Text (tEXt, zTXt, iTXt: XMP, comments), eXIf, tIME
# and private chunks are dropped. An APNG (acTL) is not kept at all.
_PNG_KEPT: Final = frozenset(
    {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"cICP", b"pHYs"}
)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def strip_png(data: bytes, meta: OutputMetadata) -> bytes | None:
    """A PNG without metadata chunks (and with `meta`'s eXIf and XMP), or None when `data`
    is animated or its chunk structure is broken."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    pieces = [_PNG_SIGNATURE]
    pending = b""
    if meta.exif:
        pending += _png_chunk(b"eXIf", meta.exif_tiff)
    if meta.xmp:
        pending += _png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + meta.xmp)
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return None
        if kind == b"acTL":
            return None
        if kind == b"IDAT" and pending:
            pieces.append(pending)
            pending = b""
        if kind in _PNG_KEPT:
            pieces.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            return b"".join(pieces)
    return None


# --- GIF -----------------------------------------------------------------------------------


def _gif_sub_blocks_end(data: bytes, pos: int) -> int:
    while pos < len(data):
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos
    raise ValueError("truncated GIF")


def strip_gif(data: bytes) -> bytes | None:
    """A single-image GIF without comment, application and text extensions, or None when
    `data` holds more than one image or is broken. GIF has no standard place for rights."""
    if len(data) < 13 or data[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    pieces = [data[:pos]]
    images = 0
    try:
        while pos < len(data):
            block = data[pos]
            if block == 0x3B:
                pieces.append(b"\x3b")
                return b"".join(pieces) if images == 1 else None
            if block == 0x21:
                label = data[pos + 1]
                end = _gif_sub_blocks_end(data, pos + 2)
                if label == 0xF9:  # graphic control: transparency, needed
                    pieces.append(data[pos:end])
                pos = end
            elif block == 0x2C:
                images += 1
                if images > 1:
                    return None
                local = data[pos + 9]
                start = pos
                pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
                end = _gif_sub_blocks_end(data, pos + 1)  # after the LZW minimum code size
                pieces.append(data[start:end])
                pos = end
            else:
                return None
    except (IndexError, ValueError):
        return None
    return None
