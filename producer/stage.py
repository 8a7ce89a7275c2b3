"""Stage 1: SD 2.1 with the style's DreamBooth LoRA turns prompts into content images and latents.

The base model loads once per worker; moving to another style swaps only the LoRA deltas. Each task's
final latent (.npy, already scaled) is the hand-off to StyleID, which inverts it directly: no VAE encode,
no 8-bit round trip. The PNG is written last, so a visible content image means both files are whole.
"""
import warnings
from typing import List

from common.atomic import write_npy, write_png
from common.config import RunConfig
from common.stage import Beat, Task, style_of
from common.style_files import lora_path, missing_lora_message
from producer.generate import generate, image_seed


class ProducerStage:
    """Generates the content image and latent of each task (all of one style), in batches."""
    kind = "gen"

    def __init__(self, config: RunConfig, device: str):
        from common.sd.pipeline import StableDiffusion
        self.config = config
        dtype = "float32" if device == "cpu" else config.model.dtype
        self.sd = StableDiffusion.shared(config.model.path, dtype, device)
        self._warned = set()
        self._fsync = config.queue.fsync == "all"

    def use_style(self, style: str):
        """Apply the style's LoRA (or, with missing_lora: warn, none): a delta swap, not a reload.

        Called on every run: a consumer sharing this process's model may have applied other weights since.
        """
        path = lora_path(self.config, style)
        if path is None:
            if self.config.producer.missing_lora == "error":
                raise FileNotFoundError(missing_lora_message(self.config, style))
            if style not in self._warned:
                self._warned.add(style)
                warnings.warn(missing_lora_message(self.config, style, fatal=False), stacklevel=2)
        self.sd.set_lora(path, self.config.producer.lora_scale if path else 0.0)

    def run(self, tasks: List[Task], beat: Beat) -> None:
        if not tasks:
            return
        p = self.config.producer
        self.use_style(style_of(tasks))
        for start in range(0, len(tasks), p.batch):
            chunk = tasks[start:start + p.batch]
            prompts = [p.prompt_template.format(prompt=t.prompt, style=t.style) for t in chunk]
            seeds = [image_seed(t.seed, t.style, t.prompt) for t in chunk]
            latents, images = generate(self.sd, prompts, seeds, size=p.size, steps=p.steps,
                                       guidance=p.guidance, negative_prompt=p.negative_prompt, beat=beat)
            for task, latent, image in zip(chunk, latents, images):
                write_npy(task.content_latent, latent, fsync=self._fsync)
                write_png(task.content_png, image, fsync=self._fsync)
