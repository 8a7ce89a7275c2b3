"""hist_score: OpenCV histogram correlation, exactly as the checker computes it, in NumPy (docs/score.md).

The checker reads images with `cv2.imread` (BGR uint8) and computes its bin indices in uint8
arithmetic, which wraps; the score keeps those wraps (they moved the leaderboard's values):
- RGB: index = B//16·256 + G//16·16 + R//16 in uint8, so the blue term wraps to 0: the index is
  (G//16)·16 + R//16, counted into a 4096-bin histogram (3840 bins stay empty but count in CORREL's means).
- HSV (OpenCV's 8-bit conversion, hue 0..179): h = 2·H in uint8, so hues ≥ 128 wrap to 2H − 256;
  h bins: ≤ 20 or > 315 → 0, ≤ 40 → 1, ≤ 75 → 2, ≤ 155 → 3, ≤ 190 → 4, ≤ 270 → 5 (6 and 7 are never
  reached); s and v: ≤ 51 → 0, ≤ 178 → 1, else 2; g = 9h + 3s + v in a 72-bin histogram over [0, 71).
The reference histogram is the float32 mean of the references'; each generated image scores
(CORREL(rgb) + CORREL(hsv)) / 2, and a style's score is the mean over its generated images.
"""
import numpy as np

from common.score.checker_images import pixels_as_checker

_SHIFT = 12  # OpenCV's fixed-point hue/saturation arithmetic (color_hsv: hsv_shift)
_DIVISORS = np.arange(1, 256, dtype=np.float64)
_SAT_DIV = np.concatenate([[0], np.rint((255 << _SHIFT) / _DIVISORS)]).astype(np.int64)
_HUE_DIV = np.concatenate([[0], np.rint((180 << _SHIFT) / (6 * _DIVISORS))]).astype(np.int64)


def hsv_opencv(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 H (0..179), S, V of uint8 RGB pixels, bit-exact with `cv2.cvtColor(BGR2HSV)`."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    s = (diff * _SAT_DIV[v] + (1 << (_SHIFT - 1))) >> _SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HUE_DIV[diff] + (1 << (_SHIFT - 1))) >> _SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def rgb_histogram(rgb: np.ndarray) -> np.ndarray:
    """4096-bin float32 histogram of the checker's wrapped RGB index."""
    r, g, b = (rgb[..., i] for i in range(3))
    index = (b // 16 * 16 * 16 + g // 16 * 16 + r // 16).astype(np.uint8)  # uint8 arithmetic: blue wraps away
    return np.bincount(index.ravel(), minlength=4096).astype(np.float32)


def hsv_histogram(rgb: np.ndarray) -> np.ndarray:
    """72-bin float32 histogram of the checker's HSV bin index (hue doubled in uint8, so it wraps)."""
    h, s, v = (c.astype(np.int64) for c in np.moveaxis(hsv_opencv(rgb), -1, 0))
    h = (2 * h) % 256
    h_bin = np.select([(h <= 20) | (h > 315), h <= 40, h <= 75, h <= 155, h <= 190, h <= 270], [0, 1, 2, 3, 4, 5], 6)
    s_bin, v_bin = (np.select([c <= 51, c <= 178], [0, 1], 2) for c in (s, v))
    g = 9 * h_bin + 3 * s_bin + v_bin
    return np.bincount(g[g < 71].ravel(), minlength=72).astype(np.float32)  # calcHist drops 71 (range [0, 71))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """OpenCV's HISTCMP_CORREL (Pearson over all bins, 1 when a histogram is constant)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    n = len(a)
    num = (a * b).sum() - a.sum() * b.sum() / n
    denom = ((a * a).sum() - a.sum() ** 2 / n) * ((b * b).sum() - b.sum() ** 2 / n)
    return float(num / np.sqrt(denom)) if abs(denom) > np.finfo(np.float64).eps else 1.0


def hist_score(gen_paths, ref_paths) -> float:
    """Mean over generated images of (CORREL(rgb) + CORREL(hsv)) / 2 against the references' mean histograms."""
    if not len(gen_paths) or not len(ref_paths):
        raise ValueError("hist_score needs at least one generated and one reference image")
    refs = [pixels_as_checker(p) for p in ref_paths]
    ref_rgb = np.mean(np.stack([rgb_histogram(x) for x in refs]), axis=0, dtype=np.float32)
    ref_hsv = np.mean(np.stack([hsv_histogram(x) for x in refs]), axis=0, dtype=np.float32)
    rgb_scores, hsv_scores = [], []
    for path in gen_paths:
        pixels = pixels_as_checker(path)
        rgb_scores.append(correlation(ref_rgb, rgb_histogram(pixels)))
        hsv_scores.append(correlation(ref_hsv, hsv_histogram(pixels)))
    return float((np.mean(rgb_scores) + np.mean(hsv_scores)) / 2)
