"""Perceptual hashes and cheap quality measures of a photo, with numpy only.

Hashes are 64 bits written as 16 lower-case hex characters; two photos whose hashes differ
in few bits (:func:`hamming`) look alike. All three survive resizing and recompression:

- :func:`ahash` (average): 8x8 grayscale, a bit per pixel brighter than the mean.
- :func:`dhash` (difference): 9x8 grayscale, a bit per pixel brighter than its left
  neighbour.
- :func:`phash` (perceptual): 32x32 grayscale, 2-D DCT-II (orthonormal, as a matrix
  product), the top-left 8x8 low frequencies; a bit per coefficient above the median of
  those 64 minus the DC term. The most robust of the three.

Quality:

- :func:`sharpness`: variance of the 4-neighbour Laplacian of a grayscale copy whose longest
  side is at most 512 px, and a 0..1 score (``var / (var + 100)``).
- :func:`exposure`: mean luminance (0..1), the fractions of clipped shadows (≤ 4/255) and
  highlights (≥ 251/255), a 0..1 score and a label ``under`` / ``ok`` / ``over``.
- :func:`dominant_colors`: k-means (k ≤ 5, deterministic seeding, ≤ 12 rounds) over the
  pixels of a copy at most 64x64 (nearest-neighbour sampled, so no blended edge colours);
  the colours covering at least 1 % as ``{"hex": "#rrggbb", "fraction"}``, largest first.

Every function takes a Pillow image of any mode and size and never modifies it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "ahash",
    "dhash",
    "dominant_colors",
    "exposure",
    "hamming",
    "phash",
    "sharpness",
]

_RESAMPLE = Image.Resampling.LANCZOS
_SHARPNESS_SIDE = 512
_SHARPNESS_K = 100.0
_COLOR_SIDE = 64
_MIN_COLOR_FRACTION = 0.01
_SHADOW = 4
_HIGHLIGHT = 251


# --------------------------------------------------------------------------- hashes


def _gray(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """``im`` as a float64 grayscale array of ``size`` (width, height)."""
    small = im.convert("L") if im.mode != "L" else im
    small = small.resize(size, _RESAMPLE)
    return np.asarray(small, dtype=np.float64)


def _hex(bits: np.ndarray) -> str:
    value = 0
    for bit in bits.ravel():
        value = (value << 1) | int(bool(bit))
    return f"{value:0{len(bits.ravel()) // 4}x}"


def ahash(im: Image.Image) -> str:
    """Average hash (16 hex characters)."""
    pixels = _gray(im, (8, 8))
    return _hex(pixels > pixels.mean())


def dhash(im: Image.Image) -> str:
    """Difference hash (16 hex characters): horizontal gradients of a 9x8 thumbnail."""
    pixels = _gray(im, (9, 8))
    return _hex(pixels[:, 1:] > pixels[:, :-1])


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: ``C @ x`` is the DCT of the column vector ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0, :] = np.sqrt(1.0 / n)
    matrix.setflags(write=False)
    return matrix


def phash(im: Image.Image) -> str:
    """Perceptual (DCT) hash (16 hex characters)."""
    pixels = _gray(im, (32, 32))
    c = _dct_matrix(32)
    low = (c @ pixels @ c.T)[:8, :8]
    median = np.median(low.ravel()[1:])  # the DC term says only how bright the photo is
    return _hex(low > median)


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes of the same length."""
    if len(a) != len(b):
        raise ValueError(f"hashes of different lengths ({len(a)} and {len(b)} hex characters)")
    try:
        return (int(a, 16) ^ int(b, 16)).bit_count()
    except ValueError:
        raise ValueError("hashes must be hexadecimal strings") from None


# --------------------------------------------------------------------------- quality


def _downscaled(im: Image.Image, side: int, mode: str) -> Image.Image:
    out = im.convert(mode) if im.mode != mode else im
    if max(out.size) > side:
        out = out.copy()
        out.thumbnail((side, side), _RESAMPLE)
    return out


def sharpness(im: Image.Image) -> dict[str, float]:
    """``{"laplacian_var": float, "score": 0..1}``; higher is sharper."""
    gray = np.asarray(_downscaled(im, _SHARPNESS_SIDE, "L"), dtype=np.float64)
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return {"laplacian_var": 0.0, "score": 0.0}
    lap = (
        gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:]
        - 4.0 * gray[1:-1, 1:-1]
    )
    var = float(lap.var())
    return {"laplacian_var": round(var, 2), "score": round(var / (var + _SHARPNESS_K), 4)}


def exposure(im: Image.Image) -> dict[str, Any]:
    """``{"mean", "shadows_clipped", "highlights_clipped", "score", "label"}``.

    ``label`` is ``under`` when the mean luminance is below 0.25 or over 40 % of the
    pixels are crushed black, ``over`` when it is above 0.8 or over 40 % are blown white,
    else ``ok``. ``score`` is 1 for a mid-grey mean without clipping and falls as the mean
    moves past 0.35 / 0.65 and as pixels clip.
    """
    gray = np.asarray(_downscaled(im, _SHARPNESS_SIDE, "L"), dtype=np.uint8)
    total = max(1, gray.size)
    mean = float(gray.mean()) / 255.0 if gray.size else 0.0
    shadows = float(np.count_nonzero(gray <= _SHADOW)) / total
    highlights = float(np.count_nonzero(gray >= _HIGHLIGHT)) / total
    if mean < 0.25 or shadows > 0.4:
        label = "under"
    elif mean > 0.8 or highlights > 0.4:
        label = "over"
    else:
        label = "ok"
    off_centre = max(0.0, abs(mean - 0.5) - 0.15) / 0.35
    score = min(1.0, max(0.0, 1.0 - off_centre - (shadows + highlights)))
    return {
        "mean": round(mean, 4),
        "shadows_clipped": round(shadows, 4),
        "highlights_clipped": round(highlights, 4),
        "score": round(score, 4),
        "label": label,
    }


def _seed_centroids(pixels: np.ndarray, k: int) -> np.ndarray:
    """Deterministic k-means++-like seeding: the most common colour (4 bits a channel),
    then repeatedly the colour bin that is most common x farthest from the chosen ones."""
    bins = (pixels.astype(np.int64) >> 4) @ np.array([256, 16, 1])
    counts = np.bincount(bins, minlength=4096)
    present = np.nonzero(counts)[0]
    weights = counts[present].astype(np.float64)
    # each present bin is represented by the mean of its pixels
    sums = np.zeros((4096, 3))
    np.add.at(sums, bins, pixels)
    reps = sums[present] / weights[:, None]
    chosen = [int(np.argmax(weights))]
    dist = ((reps - reps[chosen[0]]) ** 2).sum(axis=1)
    while len(chosen) < min(k, len(present)):
        score = weights * dist
        nxt = int(np.argmax(score))
        if score[nxt] <= 0:
            break
        chosen.append(nxt)
        dist = np.minimum(dist, ((reps - reps[nxt]) ** 2).sum(axis=1))
    return reps[chosen]


def dominant_colors(im: Image.Image, k: int = 5) -> list[dict[str, Any]]:
    """Up to ``k`` dominant colours, largest share first: ``[{"hex", "fraction"}]``."""
    # NEAREST samples real pixels: a filter would invent blends along every edge
    small = im.convert("RGB") if im.mode != "RGB" else im
    if max(small.size) > _COLOR_SIDE:
        small = small.copy()
        small.thumbnail((_COLOR_SIDE, _COLOR_SIDE), Image.Resampling.NEAREST)
    pixels = np.asarray(small, dtype=np.float64).reshape(-1, 3)
    if pixels.size == 0:
        return []
    centroids = _seed_centroids(pixels, k)
    labels = np.zeros(len(pixels), dtype=np.int64)
    for _ in range(12):
        d = ((pixels[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        new_labels = d.argmin(axis=1)
        updated = np.array([
            pixels[new_labels == j].mean(axis=0) if np.any(new_labels == j) else centroids[j]
            for j in range(len(centroids))
        ])
        converged = np.array_equal(new_labels, labels) and np.allclose(updated, centroids)
        labels, centroids = new_labels, updated
        if converged:
            break
    counts = np.bincount(labels, minlength=len(centroids))
    merged: dict[str, int] = {}
    for j, count in enumerate(counts):
        if count == 0:
            continue
        r, g, b = (round(float(v)) for v in np.clip(centroids[j], 0, 255))
        key = f"#{r:02x}{g:02x}{b:02x}"
        merged[key] = merged.get(key, 0) + int(count)
    total = len(pixels)
    ranked = sorted(merged.items(), key=lambda item: (-item[1], item[0]))
    return [
        {"hex": hex_, "fraction": round(n / total, 4)}
        for hex_, n in ranked[:k]
        if n / total >= _MIN_COLOR_FRACTION
    ]
