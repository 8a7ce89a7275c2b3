"""torch's `F.interpolate(mode="bilinear", align_corners=False, antialias=True)` in Jittor.

Each output pixel i of an axis resized from `n` to `m` averages the inputs around its centre
c = s (i + 0.5), s = n / m, with a triangle filter widened to the scale when shrinking (support s,
weights (1 − |j + 0.5 − c| / s)), or of support 1 when enlarging; weights are normalised to sum 1 and
the window is clipped to the image. They are computed in float32 in torch's order (NumPy, once per
shape), and the axes are resized one after the other (width first), each output the sum of its few taps
in order, as torch's separable kernel does.

Each axis is one fused Jittor gather-multiply-sum over its K taps (4 at 512 → 299). The same resize
written as two matmuls with dense (m, n) weight matrices gives the same values but does n/K times the
work: 1.5x slower at 512 → 299 on CPU, and the gap grows with the references' size (docs/score.md).
"""
from functools import lru_cache

import numpy as np

from common.jittor_env import load_jittor

jt = load_jittor()


@lru_cache(maxsize=16)
def antialias_taps(n: int, m: int):
    """(index (m, K) int, weight (m, K) float32): output i of an axis of `n` resized to `m` is
    Σ_k weight[i, k] · input[index[i, k]] (unused taps have weight 0). Cached per shape: read-only."""
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


def resize_antialias(images, size: tuple):
    """(N, C, H, W) float32 Jittor images resized to `size` = (height, width)."""
    return _resize_axis(_resize_axis(images, 3, size[1]), 2, size[0])  # width first, as torch


def _resize_axis(x, axis: int, m: int):
    """`x` with axis `axis` (2 or 3) resized to `m`: out[..., i, ...] = Σ_k weight[i, k] x[..., index[i, k], ...]."""
    index, weight = antialias_taps(x.shape[axis], m)
    shape = list(x.shape[:axis]) + [m] + list(x.shape[axis + 1:]) + [index.shape[1]]
    source = [f"i{d}" for d in range(x.ndim)]
    source[axis] = f"@e0(i{axis},i{x.ndim})"
    taps = x.reindex(shape, source, extras=[jt.array(index.astype(np.int32))])
    weights = jt.array(weight).broadcast(shape, [d for d in range(x.ndim) if d != axis])
    return (taps * weights).sum(x.ndim)
