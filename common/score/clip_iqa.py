"""CLIP-IQA as the checker computes it (torchmetrics' `CLIPImageQualityAssessment(prompts=("quality",))`
with piq's CLIP RN50), in Jittor (docs/score.md).

The anchors "Good photo." and "Bad photo." are tokenised (start and end tokens, no padding) and copied
into a zero-filled (2, 77) array, so each is pooled at its end token. Each image goes in whole, at its own
size: its 0..255 pixel values divided by `data_range`, which the checker leaves at 1.0 (the checker's
quirk, kept: the leaderboard was scored so), then CLIP's mean and std. The score of an image is the
softmax of 100 x its cosine with each anchor, the "Good" column.
"""
import numpy as np

from common.jittor_env import load_jittor
from common.score.checker_images import pixels_as_checker
from common.score.clip_rn50 import CLIP, fp16_rounded, sizes
from common.score.errors import ScoreFileError
from common.score.weight_file import load_network, read_network_file
from common.sd.clip import CLIPTokenizer
from common.sd.torchscript import read_torchscript

jt = load_jittor()

ANCHORS = ("Good photo.", "Bad photo.")
DATA_RANGE = 1.0  # the checker's: pixels reach the network as 0..255
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32).reshape(1, 3, 1, 1)
_WHAT = "CLIP-IQA's CLIP RN50"
_FIX = ("piq's CLIP RN50 is ~/.cache/clip/RN50.pt (or set eval.clip_iqa); the tokenizer is "
        "openai/clip-vit-base-patch16's (eval.clip_iqa_tokenizer)")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class ClipIqa:
    def __init__(self, model: CLIP, anchors: np.ndarray):
        self.model, self.anchors = model, anchors  # anchors: (2, D), unit length

    @classmethod
    def load(cls, rn50_pt, tokenizer_folder) -> "ClipIqa":
        state = read_network_file(rn50_pt, _WHAT, _FIX, read=read_torchscript)
        try:
            model = CLIP(sizes({k: tuple(v.shape) for k, v in state.items()}))
        except (KeyError, IndexError, ValueError, ZeroDivisionError) as e:
            raise ScoreFileError(f"{rn50_pt}: not a ResNet CLIP archive (no {e}); {_FIX}") from None
        load_network(model, rn50_pt, _WHAT, _FIX, state=state, adjust=fp16_rounded)
        model.eval()
        try:
            tokenizer = CLIPTokenizer.from_folder(tokenizer_folder)
        except (OSError, ValueError, KeyError) as e:
            raise ScoreFileError(f"{tokenizer_folder}: CLIP-IQA's tokenizer does not read ({e}); {_FIX}") from None
        context, vocab = model.positional_embedding.shape[0], model.token_embedding.weight.shape[0]
        ids = np.zeros((len(ANCHORS), context), np.int64)
        for row, text in enumerate(ANCHORS):
            tokens = tokenizer([text], longest=True)[0][:context]
            ids[row, :len(tokens)] = tokens
        if ids.max() >= vocab:
            raise ScoreFileError(f"{tokenizer_folder}: CLIP-IQA's tokenizer gives id {ids.max()}, beyond the "
                                 f"vocabulary of {vocab} in {rn50_pt}: the two do not match; {_FIX}")
        with jt.no_grad():
            anchors = _unit(model.encode_text(ids).astype(np.float32))
        return cls(model, anchors)

    def image_features(self, paths) -> np.ndarray:
        """(N, D) unit-length image features, one image at a time (each at its own size)."""
        features = []
        with jt.no_grad():
            for path in paths:
                pixels = pixels_as_checker(path).astype(np.float32).transpose(2, 0, 1)[None] / DATA_RANGE
                features.append(self.model.encode_image(jt.array((pixels - MEAN) / STD)).numpy()[0])
        return _unit(np.stack(features).astype(np.float32)) if features else np.zeros((0, self.anchors.shape[1]))

    def scores(self, paths) -> np.ndarray:
        """(N,) the probability of "Good photo." over "Bad photo." for each image."""
        logits = 100.0 * self.image_features(paths) @ self.anchors.T
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return (odds[:, 0] / odds.sum(axis=1)).astype(np.float32)
