"""fid_score: Fréchet distance of 64-channel Inception features, as torchmetrics 1.9's
`FrechetInceptionDistance(feature=64)` computes it (docs/score.md).

Images are read as uint8 RGB (what `ToTensor` then `(x*255).byte()` gives back), resized to 299x299 by
torch's antialiased bilinear interpolation (torchmetrics' default, not torch-fidelity's TF1 resize),
and run through the Inception stem. Statistics are float64; the distance uses the eigenvalues of
Σ₁Σ₂ (no matrix square root), and the result is rounded to float32 as torchmetrics returns it.
"""
from pathlib import Path

import numpy as np

from common.score.checker_images import pixels_as_checker
from common.score.formula import frechet_distance  # noqa: F401 (the metric's other half, Jittor-free)
from common.score.inception import INPUT_SIZE, FidInceptionStem
from common.score.resize import jt, resize_antialias
from common.score.weight_file import load_network

FILE_NAME = "weights-inception-2015-12-05-6726825d.pth"
_FIX = (f"use torch-fidelity's {FILE_NAME} (set eval.fid_inception, or put it in "
        "$TORCH_HOME/hub/checkpoints/)")


class FidInception:
    """The FID feature network; `features` runs fixed-size batches so Jittor compiles one shape."""

    def __init__(self, network: FidInceptionStem, batch_size: int = 8):
        self.network, self.batch_size = network, batch_size

    @classmethod
    def load(cls, pth, batch_size: int = 8) -> "FidInception":
        network = FidInceptionStem()
        load_network(network, pth, "the FID Inception v3 weights (fid_score)", _FIX)
        network.eval()
        return cls(network, batch_size)

    def features(self, paths) -> np.ndarray:
        """(N, 64) float64 features of the images at `paths`, which must all have one size."""
        pixels = _stack(paths)
        out = []
        for start in range(0, len(pixels), self.batch_size):
            out.append(self.features_of_pixels(pixels[start:start + self.batch_size]))
        return np.concatenate(out) if out else np.zeros((0, 64))

    def features_of_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 64) float64 features of (n, H, W, 3) uint8 images, n ≤ batch_size."""
        n = len(pixels)
        batch = np.zeros((self.batch_size,) + pixels.shape[1:], np.uint8)
        batch[:n] = pixels
        with jt.no_grad():
            images = resize_antialias(jt.array(batch).transpose(0, 3, 1, 2).float32(), (INPUT_SIZE, INPUT_SIZE))
            features = self.network(images).numpy()
        return features[:n].astype(np.float64)


def _stack(paths) -> np.ndarray:
    """(N, H, W, 3) uint8; the checker stacks a set's images into one tensor, so they share one size."""
    images = []
    for path in paths:
        image = pixels_as_checker(path)
        if images and image.shape != images[0].shape:
            raise ValueError(f"{path}: {image.shape[1]}x{image.shape[0]} pixels, but {Path(paths[0]).name} is "
                             f"{images[0].shape[1]}x{images[0].shape[0]}; FID stacks all generated (and all "
                             "reference) images as one batch, so each set must share one size: resize them")
        images.append(image)
    return np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
