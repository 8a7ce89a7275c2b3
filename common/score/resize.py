"""torch's `F.interpolate(mode="bilinear", align_corners=False, antialias=True)`, as two NumPy matrices.

Each output pixel i of an axis resized from `n` to `m` averages the inputs around its centre
c = s (i + 0.5), s = n / m, with a triangle filter widened to the scale when shrinking (support s,
weights (1 − |j + 0.5 − c| / s)), or of support 1 when enlarging; weights are normalised to sum 1 and
the window is clipped to the image, as torch's separable kernel computes them. Rows of the matrix are
those weights, so a resize is H-matrix @ image @ W-matrixᵀ.
"""
import numpy as np


def antialias_weights(n: int, m: int) -> np.ndarray:
    """(m, n) float32 matrix resizing an axis of `n` pixels to `m` as torch's antialiased bilinear does
    (in float32 arithmetic, as torch computes the weights of a float32 image)."""
    f32 = np.float32
    scale = f32(n) / f32(m)
    support = scale if scale >= 1.0 else f32(1.0)
    invscale = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
    weights = np.zeros((m, n), f32)
    for i in range(m):
        centre = scale * f32(i + 0.5)
        lo = max(int(centre - support + f32(0.5)), 0)  # int() truncates toward zero, as torch's cast does
        hi = min(int(centre + support + f32(0.5)), n)
        j = np.arange(hi - lo, dtype=f32)
        w = np.maximum(f32(0), f32(1) - np.abs((j + f32(lo) - centre + f32(0.5)) * invscale))
        total = _sequential_sum(w)
        if total != 0:
            weights[i, lo:hi] = w / total
    return weights


def _sequential_sum(values: np.ndarray) -> np.float32:
    """float32 sum in index order (NumPy's pairwise sum rounds differently)."""
    total = np.float32(0)
    for v in values:
        total = np.float32(total + v)
    return total


def resize_antialias(images: np.ndarray, size: tuple) -> np.ndarray:
    """(N, C, H, W) float32 images resized to `size` = (height, width)."""
    rows = antialias_weights(images.shape[2], size[0])
    cols = antialias_weights(images.shape[3], size[1])
    wide = np.matmul(images.astype(np.float32, copy=False), cols.T)  # width first, as torch does
    return np.matmul(rows, wide)
