"""clip_r_score's part: is an image's own prompt among CLIP's top 5 of the checker's word list? (docs/score.md)

As the checker: the prompt is the file name up to its first dot, lower-cased; the texts are
`set(words + [prompt])`; CLIP (transformers' processor and model) gives `logits_per_image`, softmaxed
over the texts; a hit when the prompt is among the 5 most probable. The checker's texts are a set, so
their order is Python's hash order: it matters only for exact ties at the 5th place, which we count in
the prompt's favour (a hit when fewer than 5 texts are strictly more probable). Texts are tokenized by
the model's tokenizer padded to the longest, as `padding=True` does; a text's embedding does not depend
on the other texts, so the word list is embedded once per call rather than once per image.
"""
from pathlib import Path

import numpy as np

from common.jittor_env import load_jittor
from common.score.clip_vision import CLIPModel
from common.score.errors import ScoreFileError
from common.score.preprocess import ImageProcessor
from common.score.vit_folder import build, load_weights, model_folder, read_config
from common.sd.clip import CLIPTokenizer

jt = load_jittor()
WHAT = "CLIP model of clip_r_score"
TOP = 5
BATCH = 16
TEXT_BATCH = 256


def read_words(path) -> list:
    """The word list as the checker reads it: every line (`readlines`), stripped and lower-cased."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            words = [line.strip().lower() for line in f.readlines()]
    except FileNotFoundError:
        raise ScoreFileError(f"{path}: missing (the word list of clip_r_score, the checker's clip_r_prompts.txt); "
                             "fix: set eval.clip_r_prompts to your copy of it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScoreFileError(f"{path}: the word list of clip_r_score does not read ({type(e).__name__}: {e}); "
                             "fix: point eval.clip_r_prompts at the checker's clip_r_prompts.txt") from None
    if not words:
        raise ScoreFileError(f"{path}: the word list of clip_r_score is empty; fix: point eval.clip_r_prompts at "
                             "the checker's clip_r_prompts.txt")
    return words


def prompt_of(path) -> str:
    """The checker's prompt of an image file: its name up to the first dot, lower-cased."""
    return Path(path).name.split(".")[0].lower()


class ClipR:
    def __init__(self, model: CLIPModel, processor: ImageProcessor, tokenizer: CLIPTokenizer):
        self.model, self.processor, self.tokenizer = model, processor, tokenizer

    @classmethod
    def load(cls, folder) -> "ClipR":
        """From a transformers CLIP folder (config.json, model.safetensors, preprocessor_config.json and the
        tokenizer files) or a repo id in the Hugging Face cache (`openai/clip-vit-large-patch14`)."""
        folder = model_folder(folder, WHAT)
        model = build(CLIPModel, read_config(folder, WHAT), folder, WHAT)
        load_weights(model, folder, WHAT)
        model.eval()
        try:
            tokenizer = CLIPTokenizer.from_folder(folder)
        except (OSError, ValueError) as e:
            raise ScoreFileError(f"{e} (the tokenizer of the {WHAT})") from None
        return cls(model, ImageProcessor.from_folder(folder), tokenizer)

    def text_embeds(self, texts: list) -> np.ndarray:
        """(T, projection_dim) float32 unit text embeddings."""
        out = []
        with jt.no_grad():
            for start in range(0, len(texts), TEXT_BATCH):
                ids = self.tokenizer(texts[start:start + TEXT_BATCH], longest=True)
                out.append(self.model.text_embeds(ids).numpy())
        return np.concatenate(out)

    def image_embeds(self, paths) -> np.ndarray:
        """(N, projection_dim) float32 unit image embeddings of image files."""
        out = []
        with jt.no_grad():
            for start in range(0, len(paths), BATCH):
                out.append(self.model.image_embeds(self.processor.batch(paths[start:start + BATCH])).numpy())
        return np.concatenate(out)

    def probabilities(self, paths, words: list) -> list:
        """Per image, (texts, softmax over them of logits_per_image): the distinct words in list order, then
        the image's prompt unless it is one of them."""
        paths = [Path(p) for p in paths]
        if not paths:
            return []
        vocab = list(dict.fromkeys(words))
        known = set(vocab)
        prompts = [prompt_of(p) for p in paths]
        extra = list(dict.fromkeys(p for p in prompts if p not in known))
        embeds = self.text_embeds(vocab + extra).astype(np.float64)
        index = {text: i for i, text in enumerate(vocab + extra)}
        images = self.image_embeds(paths).astype(np.float64)
        scale = float(np.exp(np.float32(self.model.logit_scale.numpy().reshape(()))))
        out = []
        for image, prompt in zip(images, prompts):
            texts = vocab if prompt in known else vocab + [prompt]
            logits = scale * (embeds[[index[t] for t in texts]] @ image)
            probs = np.exp(logits - logits.max())
            out.append((texts, probs / probs.sum()))
        return out

    def hits(self, paths, words: list) -> np.ndarray:
        """(N,) bool: each image's prompt among the top 5 texts (ties at the 5th place count as hits)."""
        paths, result = [Path(p) for p in paths], []
        for path, (texts, probs) in zip(paths, self.probabilities(paths, words)):
            result.append(int((probs > probs[texts.index(prompt_of(path))]).sum()) < TOP)
        return np.array(result, dtype=np.bool_)
