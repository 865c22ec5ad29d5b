"""The benchmark's SSIMULACRA2 (bench/ssimulacra2.py) against the reference Python package."""

from __future__ import annotations

import random
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bench.ssimulacra2 import score

reference = pytest.importorskip("ssimulacra2")


def photo(size: tuple[int, int] = (320, 256)) -> Image.Image:
    noise = Image.frombytes("RGB", size, random.Random(4).randbytes(size[0] * size[1] * 3))
    base = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize(size),
            Image.radial_gradient("L").resize(size),
            Image.linear_gradient("L").rotate(90).resize(size),
        ),
    )
    return Image.blend(base, noise.filter(ImageFilter.GaussianBlur(1)), 0.4)


def jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(BytesIO(buf.getvalue())).convert("RGB")


def test_identical_images_score_100() -> None:
    im = np.asarray(photo())
    assert score(im, im) == pytest.approx(100.0)


@pytest.mark.parametrize("quality", [20, 50, 90])
def test_port_agrees_with_the_reference_package(quality: int, tmp_path: Path) -> None:
    original, distorted = photo(), jpeg(photo(), quality)
    original.save(tmp_path / "a.png")
    distorted.save(tmp_path / "b.png")
    expected = reference.compute_ssimulacra2(str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    assert score(np.asarray(original), np.asarray(distorted)) == pytest.approx(expected, abs=0.01)


def test_score_falls_with_quality() -> None:
    original = photo()
    scores = [score(np.asarray(original), np.asarray(jpeg(original, q))) for q in (10, 30, 60, 90)]
    assert scores == sorted(scores)
