"""What a downloaded body is, from its magic bytes: the server's Content-Type is not trusted."""

from __future__ import annotations


def sniff_image(data: bytes) -> str | None:
    """The image type of ``data`` (e.g. "image/png"), or None if it is not a supported image.
    Only the signature is checked: decoding is imageproc.engine.compress's job."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if (
        data[:2] == b"BM"
        and len(data) >= 26
        and int.from_bytes(data[14:18], "little") in (12, 16, 40, 52, 56, 64, 108, 124)
    ):
        return "image/bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    return None
