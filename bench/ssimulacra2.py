"""SSIMULACRA2 (Cloudinary's perceptual metric, the version in libjxl's tools), for the
benchmark only: a float32 numpy/scipy port of the `ssimulacra2` package (0.3.0), which follows
the C++ reference step by step. Same colour space (linear sRGB -> XYB, made positive), six
scales of 2x2 averaging in linear light, Gaussian blur sigma 1.5 (with the package's borders, in
place of the reference's recursive Gaussian),
SSIM and edge-difference maps with 1- and 4-norms, the same 108 weights and final curve.
tests/test_ssimulacra2.py checks that it gives the package's scores (within 0.01).

Scores: 100 is identical; 90 visually lossless at 1:1; 70 high quality; 50 medium; 30 low.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from ssimulacra2.ssimulacra2 import weights as _WEIGHTS

_OPSIN = np.array(
    [
        [0.30, 1.0 - 0.078 - 0.30, 0.078],
        [0.23, 1.0 - 0.078 - 0.23, 0.078],
        [0.24342268924547819, 0.20476744424496821, 1.0 - 0.24342268924547819 - 0.20476744424496821],
    ],
    dtype=np.float32,
)
_BIAS = np.float32(0.0037930732552754493)
_CBRT_BIAS = np.cbrt(_BIAS)
_C2 = np.float32(0.0009)
_SCALES = 6


def _linear(rgb: np.ndarray) -> np.ndarray:
    x = rgb.astype(np.float32) / np.float32(255.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _xyb(linear: np.ndarray) -> np.ndarray:
    mixed = linear @ _OPSIN.T + _BIAS
    np.maximum(mixed, 0, out=mixed)
    mixed = np.cbrt(mixed) - _CBRT_BIAS
    x = 0.5 * (mixed[..., 0] - mixed[..., 1])
    y = 0.5 * (mixed[..., 0] + mixed[..., 1])
    b = mixed[..., 2]
    # MakePositiveXYB
    return np.stack([x * 14.0 + 0.42, y + 0.01, (b - y) + 0.55], axis=2).astype(np.float32)


def _blur(a: np.ndarray) -> np.ndarray:
    # As the package does it (its planes are transposed): 5 columns of zeros on the left and
    # right, mirrored beyond them and at the top and bottom; sigma 1.5, truncated at 3.33.
    radius = 5
    width = a.shape[1]
    padded = np.zeros((a.shape[0], width + 2 * radius, *a.shape[2:]), dtype=np.float32)
    padded[:, radius : radius + width] = a
    out = ndimage.gaussian_filter1d(padded, 1.5, axis=0, truncate=3.33, mode="reflect")
    out = ndimage.gaussian_filter1d(out, 1.5, axis=1, truncate=3.33, mode="reflect")
    blurred: np.ndarray = out[:, radius : radius + width]
    return blurred


def _downsample(a: np.ndarray) -> np.ndarray:
    h, w, c = a.shape
    out_h, out_w = (h + 1) // 2, (w + 1) // 2
    padded = np.empty((out_h * 2, out_w * 2, c), dtype=np.float64)
    padded[:h, :w] = a
    # Edge rows/columns of odd sizes: average of what exists (repeat the last row/column).
    if h % 2:
        padded[h, :w] = a[h - 1]
    if w % 2:
        padded[:, w] = padded[:, w - 1]
    half: np.ndarray = padded.reshape(out_h, 2, out_w, 2, c).mean(axis=(1, 3)).astype(np.float32)
    return half


def score(reference: np.ndarray, distorted: np.ndarray) -> float:
    """SSIMULACRA2 of `distorted` against `reference`, both HxWx3 uint8 sRGB arrays."""
    if reference.shape != distorted.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {distorted.shape}")
    lin1, lin2 = _linear(reference), _linear(distorted)
    values: list[float] = []
    for scale in range(_SCALES):
        if lin1.shape[0] < 8 or lin1.shape[1] < 8:
            break
        if scale:
            lin1, lin2 = _downsample(lin1), _downsample(lin2)
        img1, img2 = _xyb(lin1), _xyb(lin2)
        mu1, mu2 = _blur(img1), _blur(img2)
        s11 = _blur(img1 * img1)
        s22 = _blur(img2 * img2)
        s12 = _blur(img1 * img2)
        m11, m22, m12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
        num_m = 1.0 - (mu1 - mu2) ** 2
        num_s = 2.0 * (s12 - m12) + _C2
        denom_s = (s11 - m11) + (s22 - m22) + _C2
        d = np.maximum(1.0 - (num_m * num_s) / denom_s, 0.0).astype(np.float64)
        ssim1 = d.mean(axis=(0, 1))
        ssim4 = ((d**4).mean(axis=(0, 1))) ** 0.25
        ratio = ((1.0 + np.abs(img2 - mu2)) / (1.0 + np.abs(img1 - mu1)) - 1.0).astype(np.float64)
        artifact = np.maximum(ratio, 0.0)
        lost = np.maximum(-ratio, 0.0)
        a1, a4 = artifact.mean(axis=(0, 1)), ((artifact**4).mean(axis=(0, 1))) ** 0.25
        l1, l4 = lost.mean(axis=(0, 1)), ((lost**4).mean(axis=(0, 1))) ** 0.25
        values.append((ssim1, ssim4, a1, a4, l1, l4))  # type: ignore[arg-type]
    total = 0.0
    i = 0
    for c in range(3):
        for scale_values in values:
            ssim1, ssim4, a1, a4, l1, l4 = scale_values  # type: ignore[misc]
            for ssim_n, art_n, lost_n in ((ssim1, a1, l1), (ssim4, a4, l4)):
                total += (
                    _WEIGHTS[i] * abs(ssim_n[c]) + _WEIGHTS[i + 1] * abs(art_n[c]) + _WEIGHTS[i + 2] * abs(lost_n[c])
                )
                i += 3
    total *= 0.9562382616834844
    total = 2.326765642916932 * total - 0.020884521182843837 * total**2 + 6.248496625763138e-05 * total**3
    return 100.0 - 10.0 * total**0.6276336467831387 if total > 0 else 100.0
