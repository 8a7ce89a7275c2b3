"""AdaIN of the initial latent (docs/styleid.md §7): give each content sample the style's channel statistics.

Statistics are per sample and channel over H×W (never over the batch, as the original StyleID code did), with
the population std so tests compare exactly; fp32 on the device, no NumPy round trip.
"""
from common.jittor_env import load_jittor

jt = load_jittor()

EPS = 1e-5


def channel_stats(x):
    """Mean and population std over H×W of an fp32 (B, C, H, W) Var, each shaped (B, C, 1, 1)."""
    mean = x.mean(dims=(2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(dims=(2, 3), keepdims=True)
    return mean, var.sqrt()


def adain(content, style, eps: float = EPS):
    """content (B, C, H, W), style (1 or B, C, H, W) -> content with the style's per-channel mean and std."""
    content, style = content.float32(), style.float32()
    mu_c, sigma_c = channel_stats(content)
    mu_s, sigma_s = channel_stats(style)
    return sigma_s * (content - mu_c) / (sigma_c + eps) + mu_s
