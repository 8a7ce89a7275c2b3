"""dino_score's parts: DINOv2 image embeddings, and their mean cosine similarity (docs/score.md).

The checker embeds each image with `facebook/dinov2-base`'s image processor and `pooler_output`, one
image per forward; we run batches (the same numbers up to float rounding).
"""
from pathlib import Path

import numpy as np

from common.jittor_env import load_jittor
from common.score.dinov2 import Dinov2Model
from common.score.preprocess import ImageProcessor
from common.score.vit_folder import build, load_weights, model_folder, read_config

jt = load_jittor()
WHAT = "DINOv2 model of dino_score"
BATCH = 16


class Dino:
    def __init__(self, model: Dinov2Model, processor: ImageProcessor):
        self.model, self.processor = model, processor

    @classmethod
    def load(cls, folder) -> "Dino":
        """From a transformers folder (config.json, model.safetensors, preprocessor_config.json) or a repo id
        in the Hugging Face cache (`facebook/dinov2-base`); ScoreFileError naming what is missing."""
        folder = model_folder(folder, WHAT)
        model = build(Dinov2Model, read_config(folder, WHAT), folder, WHAT)
        load_weights(model, folder, WHAT)
        model.eval()
        return cls(model, ImageProcessor.from_folder(folder))

    def embed(self, paths) -> np.ndarray:
        """(N, hidden_size) float32 `pooler_output` of image files."""
        paths = [Path(p) for p in paths]
        out = []
        with jt.no_grad():
            for start in range(0, len(paths), BATCH):
                pixels = self.processor.batch(paths[start:start + BATCH])
                out.append(self.model(pixels).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config["hidden_size"]), np.float32)


def dino_similarity(gen: np.ndarray, ref: np.ndarray) -> float:
    """Mean over generated images of the mean over references of cosine(gen, ref), as the checker averages
    (torch's cosine_similarity: each norm clamped at 1e-8)."""
    if len(gen) == 0 or len(ref) == 0:
        raise ValueError(f"dino_similarity needs images on both sides, got {len(gen)} generated and {len(ref)} "
                         "reference embeddings")

    def unit(x):
        x = np.asarray(x, np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)

    return float((unit(gen) @ unit(ref).T).mean(axis=1).mean())
