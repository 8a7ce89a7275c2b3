"""lpip_score: LPIPS with the SqueezeNet 1.1 backbone and the v0.1 linear heads, as torchmetrics 1.9's
`learned_perceptual_image_patch_similarity(net_type="squeeze")` computes it (docs/score.md).

Each image: PIL bilinear resize to 256x256 (torchvision's `Resize` on a PIL image), `ToTensor`, ×2 − 1,
the ScalingLayer, the 7 SqueezeNet slices, each normalised over channels by √(1e-8 + Σc x²). A pair's
distance is Σ_k mean_hw Σ_c w_k,c (a − b)², the 1x1 heads `lin{k}.model.1.weight` (no bias) applied to
the squared difference. The checker runs the backbone once per pair; the backbone sees each image
alone, so here it runs once per image, and each layer's pair sums are expanded
(Σw a² + Σw b² − 2 Σw ab: one matrix product for all pairs) in float64, which the expansion needs.
"""
import numpy as np
from PIL import Image

from common.score.checker_images import open_as_checker
from common.score.squeezenet import CHANNELS, SqueezeNet, jt, nn
from common.score.weight_file import load_network

SIZE = 256
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32).reshape(1, 3, 1, 1)
SCALE = np.array([0.458, 0.448, 0.450], np.float32).reshape(1, 3, 1, 1)
BACKBONE_FILE = "squeezenet1_1-b8a52dc0.pth"
_BACKBONE_FIX = (f"use torchvision's {BACKBONE_FILE} (set eval.lpips_backbone, or put it in "
                 "$TORCH_HOME/hub/checkpoints/)")
_LINEAR_FIX = ("use the squeeze.pth shipped in the lpips or torchmetrics package (set eval.lpips_linear, or "
               "install either package)")


class NetLinLayer(nn.Module):
    """A 1x1 head without bias; index 0 is the training-time dropout, so the conv keeps key `model.1`."""

    def __init__(self, channels: int):
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))


class LinearHeads(nn.Module):
    def __init__(self):
        for k, channels in enumerate(CHANNELS):
            setattr(self, f"lin{k}", NetLinLayer(channels))

    def weights(self) -> list:
        """The 7 heads as (C,) float64 vectors."""
        return [getattr(self, f"lin{k}").model[1].weight.numpy().reshape(-1).astype(np.float64)
                for k in range(len(CHANNELS))]


class Lpips:
    """The LPIPS network; the backbone runs fixed-size batches so Jittor compiles one shape."""

    def __init__(self, net: SqueezeNet, heads: LinearHeads, batch_size: int = 8):
        self.net, self.heads, self.batch_size = net, heads, batch_size
        self.head_weights = heads.weights()

    @classmethod
    def load(cls, backbone_pth, linear_pth, batch_size: int = 8) -> "Lpips":
        net, heads = SqueezeNet(), LinearHeads()
        load_network(net, backbone_pth, "the LPIPS SqueezeNet 1.1 backbone (lpip_score)", _BACKBONE_FIX)
        load_network(heads, linear_pth, "the LPIPS linear heads (lpip_score)", _LINEAR_FIX)
        net.eval()
        return cls(net, heads, batch_size)

    def distance(self, gen_paths, ref_paths) -> float:
        """Mean LPIPS over every (generated, reference) pair."""
        return float(self.layer_distances(gen_paths, ref_paths).sum(axis=2).mean())

    def layer_distances(self, gen_paths, ref_paths) -> np.ndarray:
        """(G, R, 7) float64: each layer's term of each generated image's LPIPS against each reference."""
        if not len(gen_paths) or not len(ref_paths):
            raise ValueError("LPIPS needs at least one generated and one reference image")
        refs = self.features(ref_paths)
        rows = []
        for start in range(0, len(gen_paths), self.batch_size):
            gens = self.features(gen_paths[start:start + self.batch_size])
            rows.append(np.stack([_layer_distances(a, b, w) for a, b, w in zip(gens, refs, self.head_weights)], 2))
        return np.concatenate(rows)

    def features(self, paths) -> list:
        """The 7 channel-normalised activations of each image: (N, C_k, P_k) float32 per layer."""
        layers = [[] for _ in CHANNELS]
        for start in range(0, len(paths), self.batch_size):
            chunk = paths[start:start + self.batch_size]
            batch = np.zeros((self.batch_size, 3, SIZE, SIZE), np.float32)
            batch[:len(chunk)] = np.stack([preprocess(p) for p in chunk])
            with jt.no_grad():
                for k, x in enumerate(self.net.slices(jt.array(batch))):
                    x = x / jt.sqrt(1e-8 + (x * x).sum(dim=1, keepdims=True))
                    layers[k].append(x.numpy()[:len(chunk)].reshape(len(chunk), x.shape[1], -1))
        return [np.concatenate(parts) for parts in layers]


def preprocess(path) -> np.ndarray:
    """(3, 256, 256) float32: the image as the network sees it (resized, in [-1, 1], then scaled)."""
    image = open_as_checker(path).resize((SIZE, SIZE), Image.BILINEAR)
    x = np.asarray(image, np.float32).transpose(2, 0, 1)[None] / np.float32(255)
    return ((x * 2 - 1 - SHIFT) / SCALE)[0]


def _layer_distances(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(G, R) mean over positions of Σc w_c (a − b)² for features a (G, C, P) and b (R, C, P)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    weighted = a * w[None, :, None]
    own = (weighted * a).sum(axis=(1, 2))
    other = (b * b * w[None, :, None]).sum(axis=(1, 2))
    cross = weighted.reshape(len(a), -1) @ b.reshape(len(b), -1).T
    return (own[:, None] + other[None, :] - 2 * cross) / a.shape[2]
