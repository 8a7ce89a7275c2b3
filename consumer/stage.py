"""The sty stage: StyleID turns each content image of a style into the stylized result.

The model loads once per worker (shared with a producer in the same process); StyleID runs on the base
model unless `consumer.use_lora`. The style's inversion comes from a per-worker LRU, so a style costs its
`steps` UNet calls once, and its content images go through the UNet `consumer.batch` at a time.
A stylized latent or image with NaN/inf fails its tasks instead of being written.
"""
from collections import OrderedDict
from typing import List, Optional, Tuple

import numpy as np

from common.provenance import write_png
from common.config import RunConfig
from common.jittor_env import load_jittor
from common.sd.pipeline import NonFiniteError, require_finite
from common.stage import Beat, Task, style_of
from common.stage_model import StyleWeights, load_model, model_dtype, nonfinite_error
from common.style_files import style_image_path
from consumer.inputs import load_image, load_latent
from consumer.style_cache import StyleCache, StyleKey, file_hash
from consumer.styleid import StyleFeatures, StyleID

jt = load_jittor()


def _numpy(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


class ConsumerStage:
    """Stylizes tasks of one style: content latent (or PNG) + the style's first image -> output PNG."""
    kind = "sty"

    def __init__(self, config: RunConfig, device: str):
        self.config = config
        self.dtype = model_dtype(config, device)
        self.sd = load_model(config, device)
        self.weights = StyleWeights(self.sd, config)
        self.cache = StyleCache(config.consumer.cached_styles)
        self._fsync = config.queue.fsync

    def styleid(self) -> StyleID:
        """A StyleID with the config's settings on this worker's model (base or LoRA as applied now)."""
        c = self.config.consumer
        with jt.no_grad():
            cond = self.sd.encode_prompt([""])
        return StyleID(self.sd.unet, self.sd.scheduler, cond, steps=c.steps, gamma=c.gamma,
                       temperature=c.temperature, layers=c.layers, adain=c.adain)

    def content_latent(self, task: Task) -> np.ndarray:
        """fp32 (4, h, w): the gen stage's latent when present, else the VAE-encoded content PNG."""
        latent, png = task.files["content_latent"], task.files["content_png"]
        if latent.is_file():
            return load_latent(latent)
        if not png.is_file():
            raise FileNotFoundError(f"{latent}: no content latent, nor {png}; run the gen stage for this task first")
        size = self.config.consumer.size
        image = load_image(png, (size, size))
        with jt.no_grad():
            return _numpy(self.sd.encode_images(image[None]))[0].astype(np.float32)

    def style_features(self, styleid: StyleID, style_dir, latent_hw: Tuple[int, int], weights: str,
                       beat: Optional[Beat] = None) -> StyleFeatures:
        """The style image's inversion at this latent size, from the cache or computed (once) now."""
        c = self.config.consumer
        path = style_image_path(style_dir, c.style_image)
        key = StyleKey(file_hash(path), f"{self.config.model.path}|{self.dtype}|{weights}", tuple(latent_hw),
                       c.steps, tuple(c.layers))

        def invert():
            h, w = latent_hw
            image = load_image(path, (h * self.sd.latent_factor, w * self.sd.latent_factor))
            with jt.no_grad():
                z = self.sd.encode_images(image[None])
            return styleid.invert_style(jt.array(_numpy(z)).float32(), beat)

        return self.cache.get(key, invert)

    def run(self, tasks: List[Task], beat: Beat) -> None:
        if not tasks:
            return
        lora = self.weights.apply(style_of(tasks), self.config.consumer.use_lora)
        weights = f"{file_hash(lora)}@{self.config.lora.scale}" if lora else ""  # for the style cache's keys
        styleid = self.styleid()
        by_shape = OrderedDict()  # contents of one latent size share a style inversion and UNet batches
        for task in tasks:
            z = self.content_latent(task)
            by_shape.setdefault(z.shape, []).append((task, z))
        batch = self.config.consumer.batch
        for shape, items in by_shape.items():
            style = self.style_features(styleid, tasks[0].style_dir, shape[1:], weights, beat)
            for start in range(0, len(items), batch):
                chunk = items[start:start + batch]
                z = styleid.stylize(jt.array(np.stack([z for _, z in chunk])), style, beat)
                try:
                    require_finite(z, "stylized latent")
                    with jt.no_grad():
                        images = _numpy(self.sd.decode_latents(z))
                except NonFiniteError as e:
                    raise nonfinite_error([task for task, _ in chunk], e, self.config, lora) from e
                for (task, _), image in zip(chunk, images):
                    write_png(task.files["output_png"], image, task.made_by, fsync=self._fsync)
                beat("sty written")
