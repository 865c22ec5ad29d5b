"""A corpus of real-world-like graphics, made by code: line art, logos, palettes, charts,
fax pages, in the formats shops send them (PNG, GIF, TIFF, BMP, JPEG). Used by the tests
(never larger than the input, lossless where it pays) and by the benchmark (bench/quality.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from io import BytesIO
from typing import Any

from PIL import Image, ImageDraw, ImageFont

Maker = Callable[[], bytes]


def _save(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size)


def size_chart(width: int = 900, height: int = 600) -> Image.Image:
    """A table of sizes: black text and rules on white, one tinted header row."""
    im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    rows, columns = 9, 6
    cell_w, cell_h = width // columns, height // rows
    draw.rectangle((0, 0, width, cell_h), fill=(35, 70, 140))
    labels = ["Size", "Chest", "Waist", "Hips", "Length", "Sleeve"]
    font = _font(max(10, cell_h // 3))
    for column, label in enumerate(labels):
        draw.text((column * cell_w + 10, cell_h // 3), label, fill="white", font=font)
    for row in range(1, rows):
        for column in range(columns):
            value = (
                ["XS", "S", "M", "L", "XL", "XXL", "3XL", "4XL"][row - 1] if column == 0 else str(80 + row * 4 + column)
            )
            draw.text((column * cell_w + 10, row * cell_h + cell_h // 3), value, fill="black", font=font)
        draw.line((0, row * cell_h, width, row * cell_h), fill=(180, 180, 180), width=1)
    for column in range(1, columns):
        draw.line((column * cell_w, 0, column * cell_w, height), fill=(180, 180, 180), width=1)
    return im


def logo(width: int = 512, height: int = 256, background: tuple[int, ...] = (255, 255, 255)) -> Image.Image:
    """Flat shapes and a word, anti-aliased edges (so a few hundred colours)."""
    scale = 4
    big = Image.new("RGBA" if len(background) == 4 else "RGB", (width * scale, height * scale), background)
    draw = ImageDraw.Draw(big)
    draw.ellipse((40 * scale, 40 * scale, 216 * scale, 216 * scale), fill=(230, 60, 40))
    draw.polygon(
        [(128 * scale, 60 * scale), (196 * scale, 190 * scale), (60 * scale, 190 * scale)], fill=(250, 200, 40)
    )
    draw.text((240 * scale, 90 * scale), "ACME", fill=(20, 40, 90), font=_font(60 * scale))
    return big.resize((width, height), Image.Resampling.LANCZOS)


def line_art(width: int = 800, height: int = 800, seed: int = 1) -> Image.Image:
    """A technical drawing: thin black lines, circles and dimensions on white; greyscale."""
    rng = random.Random(seed)
    im = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(im)
    for _ in range(60):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randint(-300, 300), y0 + rng.randint(-300, 300)
        draw.line((x0, y0, x1, y1), fill=0, width=rng.choice((1, 1, 2)))
    for _ in range(15):
        x, y, r = rng.randrange(width), rng.randrange(height), rng.randint(10, 120)
        draw.ellipse((x - r, y - r, x + r, y + r), outline=0, width=2)
    draw.text((20, height - 40), "Dimensions in mm. Scale 1:10", fill=0, font=_font(20))
    return im


def fax_page(width: int = 1728, height: int = 1100, seed: int = 2) -> Image.Image:
    """A bilevel page of text lines, as a fax machine sends it (204 dpi wide)."""
    rng = random.Random(seed)
    im = Image.new("1", (width, height), 1)
    draw = ImageDraw.Draw(im)
    font = _font(22)
    words = "order invoice delivery product quantity price total shipping address phone item".split()
    y = 60
    while y < height - 60:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))
        draw.text((80, y), line, fill=0, font=font)
        y += 34
    return im


def palette_banner(width: int = 700, height: int = 250) -> Image.Image:
    """Stripes and blocks in 16 colours: a classic palette GIF/PNG banner."""
    im = Image.new("P", (width, height), 0)
    colours = [v for i in range(16) for v in (i * 16, 255 - i * 12, (i * 53) % 256)]
    im.putpalette(colours)
    draw = ImageDraw.Draw(im)
    for i in range(0, width, 25):
        draw.rectangle((i, 0, i + 12, height), fill=(i // 25) % 16)
    draw.rectangle((100, 80, 600, 170), fill=3)
    draw.text((130, 100), "SALE -50%", fill=9, font=_font(48))
    return im


def screenshot_like(width: int = 1000, height: int = 700) -> Image.Image:
    """Flat UI panels with text and a small photo inset (most pixels flat)."""
    im = Image.new("RGB", (width, height), (245, 246, 248))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, width, 60), fill=(40, 44, 52))
    draw.text((20, 18), "Product catalogue - item 4471", fill="white", font=_font(22))
    for row in range(8):
        draw.rectangle((40, 100 + row * 70, width - 40, 150 + row * 70), outline=(210, 212, 215), fill="white")
        draw.text(
            (60, 115 + row * 70), f"Variant {row + 1}: colour, size, stock {row * 7}", fill=(30, 30, 30), font=_font(18)
        )
    noise = Image.frombytes("RGB", (200, 150), random.Random(3).randbytes(200 * 150 * 3))
    im.paste(Image.blend(noise, Image.new("RGB", (200, 150), (120, 160, 90)), 0.7), (width - 260, 120))
    return im


# name -> maker of the file's bytes
GRAPHICS: dict[str, Maker] = {
    "size-chart.png": lambda: _save(size_chart(), "PNG", optimize=True),
    "size-chart-palette.png": lambda: _save(size_chart().quantize(16), "PNG", optimize=True),
    "size-chart.gif": lambda: _save(size_chart().quantize(16), "GIF"),
    "size-chart.bmp": lambda: _save(size_chart(), "BMP"),
    "size-chart-q90.jpg": lambda: _save(size_chart(), "JPEG", quality=90),
    "logo.png": lambda: _save(logo(), "PNG"),
    "logo-alpha.png": lambda: _save(logo(background=(255, 255, 255, 0)), "PNG"),
    "logo.gif": lambda: _save(logo().quantize(64), "GIF"),
    "logo.tiff": lambda: _save(logo(), "TIFF", compression="tiff_lzw"),
    "logo.webp": lambda: _save(logo(), "WEBP", lossless=True),
    "line-art.png": lambda: _save(line_art(), "PNG"),
    "line-art.bmp": lambda: _save(line_art(), "BMP"),
    "line-art-1bit.tiff": lambda: _save(line_art().convert("1"), "TIFF", compression="group4"),
    "fax-g4.tiff": lambda: _save(fax_page(), "TIFF", compression="group4", dpi=(204, 196)),
    "fax-g3.tiff": lambda: _save(fax_page(), "TIFF", compression="group3", dpi=(204, 98)),
    "fax-small-g4.tiff": lambda: _save(fax_page(864, 300, seed=5), "TIFF", compression="group4"),
    "fax-packbits.tiff": lambda: _save(fax_page(), "TIFF", compression="packbits"),
    "banner.gif": lambda: _save(palette_banner(), "GIF"),
    "banner.png": lambda: _save(palette_banner(), "PNG"),
    "banner-4bit.bmp": lambda: _save(palette_banner(), "BMP"),
    "screenshot.png": lambda: _save(screenshot_like(), "PNG"),
    "screenshot.tiff": lambda: _save(screenshot_like(), "TIFF"),
}


def build() -> dict[str, bytes]:
    return {name: make() for name, make in GRAPHICS.items()}
