"""Copyright kept, the rest stripped: EXIF Artist and Copyright and the XMP rights properties
survive into every kind of output by default; keep_copyright=False drops them too. Every
test encodes for real and decodes what came out."""

from __future__ import annotations

import random
from io import BytesIO
from typing import Any

import pytest
from PIL import Image

from imageproc.engine.compress import CompressOptions, compress
from imageproc.engine.imaging.metadata import Rights, build_xmp, read_rights
from tests import graphics

ORIENTATION, ARTIST, COPYRIGHT, MAKE, GPS_IFD = 0x0112, 0x013B, 0x8298, 0x010F, 0x8825
NOTICE = "© 2026 ACME Photo Studio"
XMP = (
    b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"'
    b' xmlns:xmpRights="http://ns.adobe.com/xap/1.0/rights/" xmlns:exif="http://ns.adobe.com/exif/1.0/"'
    b' xmpRights:Marked="True" exif:GPSLatitude="52,30.0N">'
    b"<dc:creator><rdf:Seq><rdf:li>Jane Doe</rdf:li></rdf:Seq></dc:creator>"
    b'<dc:rights><rdf:Alt><rdf:li xml:lang="x-default">All rights reserved &amp; more</rdf:li></rdf:Alt></dc:rights>'
    b"<xmpRights:WebStatement>https://acme.example/licence</xmpRights:WebStatement>"
    b"<dc:description>my holiday home</dc:description>"
    b"</rdf:Description></rdf:RDF></x:xmpmeta>"
    b'<?xpacket end="w"?>'
)


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def photo(size: tuple[int, int] = (256, 160)) -> Image.Image:
    noise = Image.frombytes("RGB", size, random.Random(2).randbytes(size[0] * size[1] * 3))
    return Image.blend(noise, Image.linear_gradient("L").convert("RGB").resize(size), 0.5)


def exif(orientation: int = 1) -> Image.Exif:
    e = Image.Exif()
    if orientation != 1:
        e[ORIENTATION] = orientation
    e[ARTIST] = b"Jane Doe"
    e[COPYRIGHT] = NOTICE.encode()  # UTF-8 in an ASCII tag, as cameras and editors write it
    e[MAKE] = "SecretCam"
    e[GPS_IFD] = {1: "N", 2: (52.0, 30.0, 0.0)}
    return e


def xmp_of(im: Image.Image) -> bytes:
    value = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp") or b""
    return value.encode() if isinstance(value, str) else value


def check_kept(data: bytes, orientation: int = 1) -> None:
    out = Image.open(BytesIO(data))
    out.load()
    tags = out.getexif()
    copyright_ = tags.get(COPYRIGHT)
    assert copyright_ is not None and copyright_.encode("latin-1").decode() == NOTICE
    assert tags.get(ARTIST) == "Jane Doe"
    expected = {ARTIST, COPYRIGHT} | ({ORIENTATION} if orientation != 1 else set())
    assert set(tags) == expected
    xmp = xmp_of(out)
    for kept in (b"Jane Doe", b"All rights reserved &amp; more", b"https://acme.example/licence", b"Marked"):
        assert kept in xmp
    for secret in (b"SecretCam", b"GPSLatitude", b"52,30.0N", b"my holiday home"):
        assert secret not in data


@pytest.mark.parametrize("output_format", ["jpeg", "webp", "avif"])
def test_copyright_survives_a_re_encoding_and_the_rest_is_dropped(output_format: str) -> None:
    source = encode(photo(), "JPEG", quality=95, exif=exif(), xmp=XMP)
    result = compress(source, CompressOptions(output_format=output_format))
    assert result.candidate == "reencoded"
    check_kept(result.data)


def test_orientation_and_copyright_share_the_jpeg_exif() -> None:
    source = encode(photo(), "JPEG", quality=95, exif=exif(6), xmp=XMP)
    result = compress(source)
    check_kept(result.data, orientation=6)
    assert Image.open(BytesIO(result.data)).getexif()[ORIENTATION] == 6


@pytest.mark.parametrize(("fmt", "output_format"), [("JPEG", "jpeg"), ("WEBP", "webp")])
def test_copyright_survives_in_a_kept_original(fmt: str, output_format: str) -> None:
    source = encode(photo(), fmt, quality=10, exif=exif(), xmp=XMP)
    result = compress(source, CompressOptions(output_format=output_format, quality=95))
    assert result.candidate == "original"
    check_kept(result.data)


def test_copyright_survives_in_a_lossless_graphic() -> None:
    tags = {ARTIST: b"Jane Doe", COPYRIGHT: NOTICE.encode(), MAKE: "SecretCam"}
    source = encode(graphics.size_chart(300, 200), "TIFF", tiffinfo=tags)  # TIFF: the tags are IFD0's own
    result = compress(source, CompressOptions(output_format="webp"))
    assert result.candidate in ("lossless_webp", "reencoded")
    out = Image.open(BytesIO(result.data))
    assert out.getexif().get(COPYRIGHT, "").encode("latin-1").decode() == NOTICE
    assert b"SecretCam" not in result.data


def test_copyright_survives_in_a_kept_png() -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    source = encode(graphics.palette_banner(200, 80), "PNG", exif=exif(), pnginfo=info, optimize=True)
    result = compress(source)
    assert result.output_format == "png"
    check_kept(result.data)


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_keep_copyright_false_drops_everything(output_format: str) -> None:
    for quality in (10, 95):  # re-encoded (source q95, output q10) and kept original
        source = encode(photo(), "JPEG", quality=95 if quality == 10 else 10, exif=exif(), xmp=XMP)
        options = CompressOptions(output_format=output_format, quality=quality, keep_copyright=False)
        result = compress(source, options)
        out = Image.open(BytesIO(result.data))
        assert dict(out.getexif()) == {}
        assert not xmp_of(out)
        for secret in (b"Jane Doe", b"ACME", b"SecretCam", b"rights"):
            assert secret not in result.data


@pytest.mark.parametrize(
    "xmp",
    [
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:rights>&b;</dc:rights>'
        b"</rdf:Description></rdf:RDF></x:xmpmeta>",
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><unclosed></x:xmpmeta>',
        b"<x:xmpmeta " + b"a" * 5000,
    ],
    ids=["entity-expansion", "malformed", "unterminated"],
)
def test_hostile_xmp_is_ignored(xmp: bytes) -> None:
    source = encode(photo(), "JPEG", quality=95, xmp=xmp)
    result = compress(source)
    assert b"aaaaaaaaaa" not in result.data
    assert not xmp_of(Image.open(BytesIO(result.data)))


def test_rights_are_read_from_attributes_and_elements_and_written_escaped() -> None:
    im = Image.new("RGB", (4, 4))
    im.info["xmp"] = XMP
    rights = read_rights(im, None)
    names = {(prefix, name) for prefix, name, _, _ in rights.xmp}
    assert names == {("dc", "creator"), ("dc", "rights"), ("xmpRights", "Marked"), ("xmpRights", "WebStatement")}
    packet = build_xmp(rights)
    assert b"All rights reserved &amp; more" in packet
    assert build_xmp(Rights()) == b""
