"""The gen stage: SD 2.1 with the style's DreamBooth LoRA turns prompts into content images and latents.

The base model loads once per worker; moving to another style swaps only the LoRA deltas. Each task's
final latent (.npy, already scaled) is the hand-off to StyleID, which inverts it directly: no VAE encode,
no 8-bit round trip. The PNG is written last, so a visible content image means both files are whole.
A latent or image with NaN/inf fails its task instead of being written.
"""
from typing import List

from common.atomic import write_npy
from common.provenance import write_png
from common.config import RunConfig
from common.sd.pipeline import NonFiniteError
from common.stage import Beat, Task, style_of
from common.stage_model import StyleWeights, load_model, nonfinite_error
from producer.generate import generate, image_seed


class ProducerStage:
    """Generates the content image and latent of each task (all of one style), in batches."""
    kind = "gen"

    def __init__(self, config: RunConfig, device: str):
        self.config = config
        self.sd = load_model(config, device)
        self.weights = StyleWeights(self.sd, config)
        self._fsync = config.queue.fsync

    def run(self, tasks: List[Task], beat: Beat) -> None:
        if not tasks:
            return
        p = self.config.producer
        lora = self.weights.apply(style_of(tasks))
        for start in range(0, len(tasks), p.batch):
            chunk = tasks[start:start + p.batch]
            prompts = [p.prompt_template.format(prompt=t.prompt, style=t.style) for t in chunk]
            seeds = [image_seed(t.seed, t.style, t.prompt) for t in chunk]
            try:
                latents, images = generate(self.sd, prompts, seeds, size=p.size, steps=p.steps,
                                           guidance=p.guidance, negative_prompt=p.negative_prompt, beat=beat)
            except NonFiniteError as e:
                raise nonfinite_error(chunk, e, self.config, lora) from e
            for task, latent, image in zip(chunk, latents, images):
                write_npy(task.files["content_latent"], latent, fsync=self._fsync, replace=True)  # a hand-off: this run's
                write_png(task.files["content_png"], image, task.made_by, fsync=self._fsync)
