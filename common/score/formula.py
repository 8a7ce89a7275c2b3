"""The challenge's score from each style's metric parts, aggregated as the checker does (docs/score.md).

Overall (the checker's score): DINO, histogram, LPIPS and CLIP-IQA are each style's mean, then the mean
over styles; CLIP-R is the share of hits over every image (not a mean of styles); FID is one distance of
all generated images pooled against all references pooled (an older copy of the checker pooled only the
last style). The per-style rows use the style's own CLIP-R share and its own FID: they are for the table,
not the checker's numbers.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, Mapping

import numpy as np

KEYS = ("dino_score", "hist_score", "fid_score", "lpip_score", "clip_iqa_score", "clip_r_score", "final_score")
FID_CAP = 20.0  # a FID of 20 or more earns nothing


def final_score(dino: float, hist: float, lpips: float, clip_r: float, fid: float, clip_iqa: float) -> float:
    """(0.2 dino + 0.4 hist + 0.4 max(0, 1 - lpips)) x (0.5 clip_r + 0.4 (20 - min(fid, 20)) / 20 + 0.1 clip_iqa)."""
    likeness = 0.2 * dino + 0.4 * hist + 0.4 * max(0.0, 1.0 - lpips)
    quality = 0.5 * clip_r + 0.4 * (FID_CAP - min(fid, FID_CAP)) / FID_CAP + 0.1 * clip_iqa
    return likeness * quality if not math.isnan(fid) else math.nan


@dataclass(frozen=True)
class StyleParts:
    """One image set of one style, measured: the style's metric means, and what pools across styles (each
    image's CLIP-R hit, the Inception features of the images and of the style's references)."""
    dino: float
    hist: float
    lpips: float
    clip_iqa: float
    hits: np.ndarray  # bool (N,)
    features: np.ndarray  # float64 (N, 64)
    ref_features: np.ndarray  # float64 (M, 64)

    def to_json(self) -> dict:
        return {"dino": self.dino, "hist": self.hist, "lpips": self.lpips, "clip_iqa": self.clip_iqa,
                "hits": [bool(h) for h in self.hits], "features": np.asarray(self.features, np.float64).tolist(),
                "ref_features": np.asarray(self.ref_features, np.float64).tolist()}

    @classmethod
    def from_json(cls, data) -> "StyleParts":
        """The parts `to_json` wrote; ValueError if `data` is not that (a hand-off is not trusted)."""
        try:
            values = {k: float(data[k]) for k in ("dino", "hist", "lpips", "clip_iqa")}
            hits = np.array(data["hits"], dtype=bool).reshape(-1)
            features = np.array(data["features"], dtype=np.float64)
            ref_features = np.array(data["ref_features"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a style's score parts ({type(e).__name__}: {e})") from None
        if features.ndim != 2 or ref_features.ndim != 2 or len(features) != len(hits) \
                or features.shape[1] != ref_features.shape[1]:
            raise ValueError(f"score parts of mismatched sizes: {len(hits)} hits, features {features.shape}, "
                             f"reference features {ref_features.shape}")
        return cls(hits=hits, features=features, ref_features=ref_features, **values)


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID of two (n, d) feature sets: ‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2 Σ Re √eig(Σ₁Σ₂), as float32."""
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 images on each side (got {len(real)} reference and "
                         f"{len(fake)} generated)")
    mean_real, cov_real = _moments(real)
    mean_fake, cov_fake = _moments(fake)
    roots = np.sqrt(np.linalg.eigvals(cov_real @ cov_fake).astype(np.complex128)).real.sum()
    distance = ((mean_real - mean_fake) ** 2).sum() + np.trace(cov_real) + np.trace(cov_fake) - 2 * roots
    return float(np.float32(distance))


def _moments(features: np.ndarray):
    """Mean and unbiased covariance from sums, as torchmetrics accumulates them: (XᵀX − n μμᵀ)/(n − 1)."""
    x = np.asarray(features, np.float64)
    n = len(x)
    mean = x.sum(axis=0) / n
    return mean, (x.T @ x - n * np.outer(mean, mean)) / (n - 1)


Frechet = Callable[[np.ndarray, np.ndarray], float]  # (real features, generated features) -> FID


def _fid(frechet: Frechet, real: np.ndarray, fake: np.ndarray) -> float:
    """The Frechet distance, NaN where a covariance needs more than one image."""
    return float(frechet(real, fake)) if len(real) > 1 and len(fake) > 1 else math.nan


def _row(dino, hist, lpips, clip_iqa, clip_r, fid) -> Dict[str, float]:
    values = [float(v) for v in (dino, hist, fid, lpips, clip_iqa, clip_r)]
    return dict(zip(KEYS, values + [final_score(dino, hist, lpips, clip_r, fid, clip_iqa)]))


def combine(parts: Mapping[str, StyleParts], frechet: Frechet = frechet_distance) -> dict:
    """The checker's keys for all styles together, plus `per_style` ({style: the same keys, from that
    style's images alone}) and `images` (how many were scored)."""
    if not parts:
        raise ValueError("no style was scored")
    per_style = {style: _row(p.dino, p.hist, p.lpips, p.clip_iqa, np.mean(p.hits),
                             _fid(frechet, p.ref_features, p.features)) for style, p in parts.items()}
    styles = list(parts.values())
    hits = np.concatenate([p.hits for p in styles])
    fid = _fid(frechet, np.concatenate([p.ref_features for p in styles]),
               np.concatenate([p.features for p in styles]))
    overall = _row(*(np.mean([getattr(p, k) for p in styles]) for k in ("dino", "hist", "lpips", "clip_iqa")),
                   np.mean(hits), fid)
    return dict(overall, per_style=per_style, images=int(len(hits)))
