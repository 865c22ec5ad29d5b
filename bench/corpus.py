"""A corpus of real photographs, built reproducibly and without network.

The photographs are the colour ones that scikit-image ships inside its wheel (read from
the package's own data folder: nothing is downloaded). Each corpus image is a mosaic of
them — rows of tiles at about their natural size, randomly mirrored, with a little grain
so that upscaled tiles are not unnaturally smooth — at a size between 0.3 and 12 MP, saved
as JPEG quality 90-95, or, one in five, as PNG (every other one of those RGBA).

The corpus is cached under bench/corpus/<name>/ with a manifest; it is rebuilt when the
specification (and so its fingerprint) changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CORPUS_ROOT = Path(__file__).resolve().parent / "corpus"

# Colour photographs bundled in the scikit-image wheel (skimage/data/); the others are
# grey, synthetic, or fetched on first use, which this benchmark must never do.
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "ihc.png",
)
ASPECTS = (4 / 3, 3 / 2, 1.0, 16 / 9, 3 / 4, 2 / 3)
SEED = 20240501


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    count: int
    megapixels: tuple[float, ...]  # cycled through, image by image
    png_every: int = 5  # one image in `png_every` is a PNG

    def fingerprint(self) -> str:
        text = json.dumps([asdict(self), PHOTOS, ASPECTS, SEED, 2], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


FULL = CorpusSpec("full", 200, (0.3, 0.6, 1.0, 2.0, 4.0, 8.0, 12.0))
QUICK = CorpusSpec("quick", 30, (0.3, 0.6, 1.0, 2.0))


@dataclass(frozen=True)
class CorpusImage:
    name: str
    path: str  # relative to the corpus folder
    format: str  # "JPEG" | "PNG"
    mode: str
    width: int
    height: int
    bytes: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass
class Corpus:
    folder: Path
    images: list[CorpusImage]

    @property
    def megapixels(self) -> float:
        return sum(i.pixels for i in self.images) / 1e6

    @property
    def total_bytes(self) -> int:
        return sum(i.bytes for i in self.images)

    def read(self, image: CorpusImage) -> bytes:
        return (self.folder / image.path).read_bytes()

    def describe(self) -> str:
        pngs = [i for i in self.images if i.format == "PNG"]
        rgba = sum(1 for i in pngs if i.mode == "RGBA")
        sizes = sorted({round(i.pixels / 1e6, 1) for i in self.images})
        return (
            f"{len(self.images)} images, {self.megapixels:.0f} MP, {self.total_bytes / 1e6:.0f} MB; "
            f"{len(self.images) - len(pngs)} JPEG (q90-95), {len(pngs)} PNG ({rgba} RGBA); "
            f"sizes {sizes[0]}-{sizes[-1]} MP"
        )


def _photos_folder() -> Path:
    import skimage.data

    folder = Path(skimage.data.__file__).resolve().parent
    missing = [name for name in PHOTOS if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"scikit-image's wheel lacks {missing} in {folder}; the corpus must not download them")
    return folder


def _load_photos() -> list[Image.Image]:
    folder = _photos_folder()
    photos = []
    for name in PHOTOS:
        with Image.open(folder / name) as im:
            photos.append(im.convert("RGB"))
    return photos


def _mosaic(photos: list[Image.Image], width: int, height: int, rng: random.Random) -> Image.Image:
    canvas = Image.new("RGB", (width, height))
    y = 0
    while y < height:
        # Rows about as tall as the photographs themselves (250-900 px): big mosaics hold
        # more tiles rather than blown-up ones, so they compress like big photographs.
        row_h = min(rng.randint(250, 900), height - y) if height - y > 250 else height - y
        x = 0
        while x < width:
            photo = rng.choice(photos)
            tile_w = max(1, round(photo.width * row_h / photo.height))
            tile = photo.resize((tile_w, row_h), Image.Resampling.BILINEAR)
            if rng.random() < 0.5:
                tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            canvas.paste(tile, (x, y))
            x += tile_w
        y += row_h
    return canvas


def _grain(image: Image.Image, seed: int) -> Image.Image:
    pixels = np.asarray(image, dtype=np.int16)
    noise = np.random.default_rng(seed).normal(0.0, 2.5, pixels.shape).astype(np.int16)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB")


def _alpha(width: int, height: int) -> Image.Image:
    # A product cut-out: an opaque rounded shape on a transparent background, soft edges.
    mask = Image.new("L", (width, height), 0)
    inset = min(width, height) // 10
    ImageDraw.Draw(mask).rounded_rectangle(
        (inset, inset, width - inset, height - inset), radius=min(width, height) // 5, fill=255
    )
    return mask.filter(ImageFilter.GaussianBlur(3))


def _make(index: int, spec: CorpusSpec, photos: list[Image.Image]) -> tuple[bytes, str, str, int, int]:
    rng = random.Random(SEED * 1000 + index)
    megapixels = spec.megapixels[index % len(spec.megapixels)]
    aspect = rng.choice(ASPECTS)
    width = max(64, round((megapixels * 1e6 * aspect) ** 0.5))
    height = max(64, round(width / aspect))
    image = _grain(_mosaic(photos, width, height, rng), SEED + index)
    buf = io.BytesIO()
    if index % spec.png_every == spec.png_every - 1:
        rgba = (index // spec.png_every) % 2 == 1
        if rgba:
            image.putalpha(_alpha(width, height))
        image.save(buf, "PNG", compress_level=6)
        return buf.getvalue(), "PNG", image.mode, width, height
    image.save(buf, "JPEG", quality=rng.randint(90, 95))
    return buf.getvalue(), "JPEG", "RGB", width, height


def build(spec: CorpusSpec, *, log: bool = True) -> Corpus:
    """The corpus of `spec`, from the cache when it is current, otherwise built now."""
    folder = CORPUS_ROOT / spec.name
    manifest = folder / "manifest.json"
    fingerprint = spec.fingerprint()
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        if data.get("fingerprint") == fingerprint:
            images = [CorpusImage(**row) for row in data["images"]]
            if all((folder / i.path).is_file() for i in images):
                return Corpus(folder, images)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    photos = _load_photos()
    images = []
    for index in range(spec.count):
        data_bytes, fmt, mode, width, height = _make(index, spec, photos)
        name = f"{index:04d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        (folder / name).write_bytes(data_bytes)
        images.append(CorpusImage(name, name, fmt, mode, width, height, len(data_bytes)))
        if log and index % 20 == 19:
            print(f"  corpus: {index + 1}/{spec.count}", flush=True)
    manifest.write_text(json.dumps({"fingerprint": fingerprint, "images": [asdict(i) for i in images]}, indent=1))
    return Corpus(folder, images)
