"""quality="auto": per image, the lowest encoder quality whose perceptual score meets a target.

The score used at run time must cost little next to one encode, so it is not SSIMULACRA2
itself. Trial encodes are made of a *sample* of the image: small full-resolution tiles spread
over it in a grid, aligned to the codecs' 16-pixel blocks, so that the artefacts are those of
the full encode (JPEG: 32-pixel tiles, 1/10 of the pixels; WebP and AVIF, whose prediction
reaches further: 64-pixel tiles). A trial is scored by SSIM on the luma plane at two scales
(numpy; 8x8 windows every 4 pixels, from 4x4 block sums), and a per-format linear model of
that SSIM, the trial's bits per pixel, the sample's activity and the quality predicts the
full image's SSIMULACRA2 (MODELS, fitted by bench/quality.py --calibrate on the even-numbered
benchmark photographs and measured on images it was not fitted on: bench/results.md).

The search: one trial at the quality where the calibration photographs score the target on
average, a step along their mean curve to where this image should meet it, a second trial
there when that step is 2 or more, and the quality where the line through the two trials
meets the target (a third trial only when that lies more than 4 steps beyond both: an image
unlike the calibration's). Then the caller makes the one full-size encode at it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Final

import numpy as np
from PIL import Image

# Targets on the SSIMULACRA2 scale (90: visually lossless at 1:1; 70: high; 50: medium).
LEVELS: Final[dict[str, float]] = {"auto:high": 80.0, "auto:good": 70.0, "auto:eco": 60.0}
LEVELS_ALIAS: Final[dict[str, str]] = {"auto": "auto:good"}

QUALITY_RANGE: Final[dict[str, tuple[int, int]]] = {"jpeg": (10, 95), "webp": (10, 95), "avif": (10, 95)}

_MIN_SAMPLE: Final = 49_152  # pixels; an image this small or smaller is its own sample
_MAX_SAMPLE: Final = 262_144


@dataclass(frozen=True)
class Model:
    """Predicts SSIMULACRA2 from a sample trial: weights over features(); the mean SSIMULACRA2
    of the calibration photographs at each quality (the search's start and its slope); the
    sample's tile size and share of the image's pixels."""

    weights: tuple[float, ...]
    curve: tuple[tuple[int, float], ...]
    tile: int
    share: int


# Fitted by bench/quality.py --calibrate on the 15 even-numbered photographs of the benchmark
# (7 qualities each; rows scoring 35..95). Measured on images never fitted on: bench/results.md.
MODELS: Final[dict[str, Model]] = {
    "jpeg": Model(
        (27.175, 0.4836, 9.2318, -0.223, 8.0695, -12.957, 88.3478, -62.2372),
        ((30, 49.82), (40, 61.06), (50, 64.72), (60, 69.42), (70, 73.99), (80, 79.09), (90, 87.11)),
        32,
        10,
    ),
    "webp": Model(
        (33.6774, 10.5367, 1.9131, -1.1432, 9.034, -8.205, 48.427, -20.63),
        ((30, 47.79), (40, 54.43), (50, 59.36), (60, 63.95), (70, 67.68), (80, 74.15), (90, 84.01)),
        64,
        10,
    ),
    "avif": Model(
        (1.4113, 13.6751, 6.9386, -1.6896, 3.9729, -10.4196, 113.2096, -88.012),
        ((20, 31.47), (30, 47.99), (40, 61.5), (50, 71.65), (60, 77.95), (70, 82.22), (80, 86.02)),
        32,
        10,
    ),
}


def target_for(level: str) -> float:
    return LEVELS[LEVELS_ALIAS.get(level, level)]


def sample(im: Image.Image, fmt: str = "jpeg") -> Image.Image:
    """The sample of `im` that trial encodes of `fmt` are made of (see MODELS)."""
    model = MODELS[fmt]
    return tiles(im, model.tile, model.share)


def tiles(im: Image.Image, tile: int, share: int) -> Image.Image:
    """Tiles of `im` (`tile` pixels square, 16-pixel aligned) spread over it in a grid, joined
    into one image of about 1/`share` of its pixels (within _MIN_SAMPLE.._MAX_SAMPLE)."""
    pixels = im.width * im.height
    if pixels <= _MIN_SAMPLE or min(im.size) < 2 * tile:
        return im
    budget = min(_MAX_SAMPLE, max(_MIN_SAMPLE, pixels // share))
    count = max(2, budget // (tile * tile))
    columns = max(1, round((count * im.width / im.height) ** 0.5))
    rows = max(1, -(-count // columns))
    columns = min(columns, im.width // tile)
    rows = min(rows, im.height // tile)
    out = Image.new(im.mode, (columns * tile, rows * tile))
    for row in range(rows):
        y = ((im.height - tile) * (2 * row + 1) // (2 * rows)) // 16 * 16
        for column in range(columns):
            x = ((im.width - tile) * (2 * column + 1) // (2 * columns)) // 16 * 16
            out.paste(im.crop((x, y, x + tile, y + tile)), (column * tile, row * tile))
    return out


def _luma(im: Image.Image) -> np.ndarray:
    if im.mode in ("RGBA", "LA"):
        im = im.convert("RGB" if im.mode == "RGBA" else "L")
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.float32) - 128.0  # centred: smaller sums, exact enough in float32


def decoded_luma(data: bytes) -> np.ndarray:
    """The luma plane of an encoded trial, as _luma() gives it (JPEG: decoded alone)."""
    with Image.open(BytesIO(data)) as decoded:
        if decoded.format == "JPEG":
            decoded.draft("L", decoded.size)  # the Y plane only: no chroma, no colour conversion
        decoded.load()
        return _luma(decoded)


def _window_sums(a: np.ndarray) -> np.ndarray:
    """Sums over 8x8 windows every 4 pixels (half-overlapping, so that windows straddle the
    codecs' block edges): 4x4 block sums, then 2x2 of them."""
    h, w = a.shape[0] // 4 * 4, a.shape[1] // 4 * 4
    blocks = a[:h, :w].reshape(h // 4, 4, w // 4, 4).sum(axis=(1, 3))
    sums: np.ndarray = blocks[:-1, :-1] + blocks[1:, :-1] + blocks[:-1, 1:] + blocks[1:, 1:]
    return sums


@dataclass(frozen=True)
class _Reference:
    """A reference plane at one scale, with the window sums that do not change per trial."""

    plane: np.ndarray
    sum_x: np.ndarray
    sum_xx: np.ndarray

    @classmethod
    def of(cls, plane: np.ndarray) -> _Reference:
        return cls(plane, _window_sums(plane), _window_sums(plane * plane))


_C1: Final = (0.01 * 255) ** 2
_C2: Final = (0.03 * 255) ** 2


def _ssim_at(ref: _Reference, y: np.ndarray) -> float:
    if min(ref.plane.shape) < 12:
        return 1.0 - float(np.abs(ref.plane - y).mean()) / 255.0
    n = 64.0
    mx, my = ref.sum_x / n, _window_sums(y) / n
    sxx = ref.sum_xx / n - mx * mx
    syy = _window_sums(y * y) / n - my * my
    sxy = _window_sums(ref.plane * y) / n - mx * my
    # The means are of centred values: add the offset back for the luminance term.
    ux, uy = mx + 128.0, my + 128.0
    ssim = ((2 * ux * uy + _C1) * (2 * sxy + _C2)) / ((ux * ux + uy * uy + _C1) * (sxx + syy + _C2))
    return float(ssim.mean())


def _half(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w]
    half: np.ndarray = (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * 0.25
    return half


class Scorer:
    """SSIM of distorted versions of one luma plane, at full and half resolution, weighted
    2:1 to the full scale (blocking and ringing show at full scale, blur and banding at
    both). 8x8 windows every 4 pixels; the reference's own sums are computed once."""

    def __init__(self, reference: np.ndarray) -> None:
        self.full = _Reference.of(reference)
        self.half = _Reference.of(_half(reference))

    def __call__(self, distorted: np.ndarray) -> float:
        full = _ssim_at(self.full, distorted)
        half = _ssim_at(self.half, _half(distorted))
        return (2 * full + half) / 3


def ssim(reference: np.ndarray, distorted: np.ndarray) -> float:
    """The run-time score of `distorted` against `reference` (luma planes from _luma)."""
    return Scorer(reference)(distorted)


def activity(plane: np.ndarray) -> float:
    """Mean absolute difference between neighbouring pixels of a luma plane: how busy the
    picture is (texture masks artefacts in SSIMULACRA2 more than in SSIM)."""
    return float(np.abs(np.diff(plane, axis=1)).mean() + np.abs(np.diff(plane, axis=0)).mean()) / 2


def features(ssim_full: float, ssim_half: float, bits_per_pixel: float, busy: float, quality: int) -> list[float]:
    """What the models see of a trial: its SSIM at full and half scale (as -ln(1 - ssim)),
    its bits per pixel, the sample's activity (log) and the quality (scaled to 0..1)."""
    uf = -float(np.log(max(1e-6, 1.0 - min(ssim_full, 0.9995))))
    uh = -float(np.log(max(1e-6, 1.0 - min(ssim_half, 0.9995))))
    q = quality / 100
    return [1.0, uf, uh, uf * uf, float(np.log(max(bits_per_pixel, 1e-3))), float(np.log1p(busy)), q, q * q]


@dataclass(frozen=True)
class Choice:
    quality: int
    score: float  # predicted SSIMULACRA2 of the full image at that quality
    sample_bytes: int  # the sample's encoded size at that quality (interpolated between trials)
    trials: int


@dataclass(frozen=True)
class Trial:
    quality: int
    score: float  # predicted SSIMULACRA2
    size: int


class Predictor:
    """Trial encodes of one sample in one format, each turned into a predicted SSIMULACRA2."""

    def __init__(self, sample_image: Image.Image, encode: Callable[[Image.Image, int], bytes], fmt: str) -> None:
        self._image = sample_image
        self._encode = encode
        self._model = MODELS[fmt]
        reference = _luma(sample_image)
        self._scorer = Scorer(reference)
        self._busy = activity(reference)
        self._pixels = sample_image.width * sample_image.height

    def __call__(self, quality: int) -> Trial:
        data = self._encode(self._image, quality)
        distorted = decoded_luma(data)
        full = _ssim_at(self._scorer.full, distorted)
        half = _ssim_at(self._scorer.half, _half(distorted))
        if full >= 0.99999 and half >= 0.99999:
            return Trial(quality, 100.0, len(data))  # nothing lost (a flat sample)
        row = features(full, half, len(data) * 8 / self._pixels, self._busy, quality)
        score = float(np.dot(self._model.weights, row))
        return Trial(quality, min(100.0, score), len(data))


def _on_curve(curve: tuple[tuple[int, float], ...], target: float) -> tuple[float, float]:
    """The quality at which `curve` reaches `target` and the curve's slope there (score per
    quality step; never below 0.05, so that a step stays finite)."""
    qualities = [float(q) for q, _ in curve]
    scores = [s for _, s in curve]
    quality = float(np.interp(target, scores, qualities))
    slopes = np.gradient(scores, qualities)
    return quality, max(0.05, float(np.interp(quality, qualities, slopes)))


def choose_quality(
    sample_image: Image.Image,
    encode: Callable[[Image.Image, int], bytes],
    fmt: str,
    target: float,
) -> Choice:
    """The quality (in QUALITY_RANGE[fmt]) at which the predicted SSIMULACRA2 of the image meets
    `target`, from at most two trial encodes of `sample_image` (see the module's docstring).
    `encode(image, quality)` makes the trial files, decoded here with Pillow."""
    low, high = QUALITY_RANGE[fmt]
    predict = Predictor(sample_image, encode, fmt)
    start, slope = _on_curve(MODELS[fmt].curve, target)
    first = predict(min(high, max(low, round(start))))
    step = min(high, max(low, round(first.quality + (target - first.score) / slope)))
    if abs(step - first.quality) < 2:
        step = max(step, first.quality) if first.score < target else step
        score = first.score + slope * (step - first.quality)
        return Choice(step, score, first.size, 1)
    trials = [first, predict(step)]
    quality, weight, a, b = _through(trials, target, low, high)
    if min(abs(quality - t.quality) for t in trials) > _FAR:
        # The target lies well outside both trials (an image unlike the calibration's): one
        # more trial where the line says, then the line through the two around the target.
        trials.append(predict(quality))
        below = [t for t in trials if t.score < target]
        above = [t for t in trials if t.score >= target]
        if below and above:  # bracketed: the closest pair around the target
            pair = [max(below, key=lambda t: t.quality), min(above, key=lambda t: t.quality)]
        else:
            pair = sorted(trials, key=lambda t: abs(t.score - target))[:2]
        quality, weight, a, b = _through(pair, target, low, high)
    score = a.score + (b.score - a.score) * weight
    size = float(np.exp(np.log(a.size) + (np.log(b.size) - np.log(a.size)) * weight))
    return Choice(quality, score, round(size), len(trials))


_FAR: Final = 4  # quality steps beyond the nearest trial that a line is trusted for


def _through(trials: list[Trial], target: float, low: int, high: int) -> tuple[int, float, Trial, Trial]:
    """The quality (in low..high) where the line through two trials meets `target`, no further
    from them than they are apart; and its weight along the line from a to b."""
    a, b = sorted(trials[:2], key=lambda t: t.quality)
    spread = b.quality - a.quality
    if spread == 0:
        return a.quality, 0.0, a, a
    if b.score - a.score > 0.05:
        exact = a.quality + (target - a.score) * spread / (b.score - a.score)
    else:  # flat between the trials (a sample the codec barely changes): the lower one
        exact = float(a.quality if a.score >= target else b.quality)
    exact = min(b.quality + spread, max(a.quality - spread, exact))
    # The lowest whole quality on the line that meets the target.
    quality = min(high, max(low, math.ceil(exact - 1e-6)))
    return quality, (quality - a.quality) / spread, a, b
