"""torch's `F.interpolate(mode="bilinear", align_corners=False, antialias=True)` in NumPy.

Each output pixel i of an axis resized from `n` to `m` averages the inputs around its centre
c = s (i + 0.5), s = n / m, with a triangle filter widened to the scale when shrinking (support s,
weights (1 − |j + 0.5 − c| / s)), or of support 1 when enlarging; weights are normalised to sum 1 and
the window is clipped to the image. They are computed in float32 in torch's order, and the axes are
resized one after the other (width first), each output a weighted sum of its few taps, as torch's
separable kernel does.
"""
import numpy as np


def antialias_taps(n: int, m: int):
    """(index (m, K) int, weight (m, K) float32): output i of an axis of `n` resized to `m` is
    Σ_k weight[i, k] · input[index[i, k]] (unused taps have weight 0)."""
    f32 = np.float32
    scale = f32(n) / f32(m)
    support = scale if scale >= 1.0 else f32(1.0)
    invscale = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
    windows = []
    for i in range(m):
        centre = scale * f32(i + 0.5)
        lo = max(int(centre - support + f32(0.5)), 0)  # int() truncates toward zero, as torch's cast does
        hi = min(int(centre + support + f32(0.5)), n)
        j = np.arange(hi - lo, dtype=f32)
        w = np.maximum(f32(0), f32(1) - np.abs((j + f32(lo) - centre + f32(0.5)) * invscale))
        total = _sequential_sum(w)
        windows.append((lo, w / total if total != 0 else w))
    taps = max(len(w) for _, w in windows)
    index = np.zeros((m, taps), np.int64)
    weight = np.zeros((m, taps), f32)
    for i, (lo, w) in enumerate(windows):
        index[i] = np.minimum(lo + np.arange(taps), n - 1)
        weight[i, :len(w)] = w
    return index, weight


def _sequential_sum(values: np.ndarray) -> np.float32:
    """float32 sum in index order (NumPy's pairwise sum rounds differently)."""
    total = np.float32(0)
    for v in values:
        total = np.float32(total + v)
    return total


def resize_antialias(images: np.ndarray, size: tuple) -> np.ndarray:
    """(N, C, H, W) float32 images resized to `size` = (height, width)."""
    x = images.astype(np.float32, copy=False)
    for m in (size[1], size[0]):  # width first, as torch; the axis being resized is moved to the front
        x = np.ascontiguousarray(np.moveaxis(x, 3, 0))  # (N, C, H, W) → (W, N, C, H) → (H, W', N, C)
        index, weight = antialias_taps(x.shape[0], m)
        out = np.zeros((m,) + x.shape[1:], np.float32)
        for k in range(index.shape[1]):  # tap by tap, in torch's order
            out += x[index[:, k]] * weight[:, k].reshape((-1,) + (1,) * (x.ndim - 1))
        x = out
    return np.ascontiguousarray(x.transpose(2, 3, 0, 1))  # (H', W', N, C) → (N, C, H', W')
