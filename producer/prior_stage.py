"""Stage prior: the class images of prior preservation, made by the base model without any LoRA.

Each task is one class image of a class prompt's set (common/prior.py): the class prompt, sampled as the
gen stage samples content images (DDIM, producer.steps, producer.guidance, producer.negative_prompt) at
the training resolution, its noise seeded by the image's index and the prompt. The PNG carries its
record (docs/queue.md §11) and is placed atomically, so a rerun keeps every whole image and makes only
the missing ones.
"""
from typing import List

from common.config import RunConfig
from common.provenance import write_png
from common.sd.pipeline import NonFiniteError
from common.stage import Beat, Task, style_of
from common.stage_model import load_model, nonfinite_error
from producer.generate import generate, image_seed


class PriorStage:
    """Generates the class images of each task (all of one class prompt's set), in batches."""
    kind = "prior"

    def __init__(self, config: RunConfig, device: str):
        self.config = config
        self.sd = load_model(config, device)
        self._fsync = config.queue.fsync

    def run(self, tasks: List[Task], beat: Beat) -> None:
        if not tasks:
            return
        group = style_of(tasks)
        p, size = self.config.producer, self.config.train_size
        self.sd.set_lora(None)  # the base model: another stage in this process may have merged a LoRA
        for start in range(0, len(tasks), p.batch):
            chunk = tasks[start:start + p.batch]
            seeds = [image_seed(t.seed, group, t.prompt) for t in chunk]
            try:
                _, images = generate(self.sd, [t.prompt for t in chunk], seeds, size=size, steps=p.steps,
                                     guidance=p.guidance, negative_prompt=p.negative_prompt, beat=beat)
            except NonFiniteError as e:
                raise nonfinite_error(chunk, e, self.config, None) from e
            for task, image in zip(chunk, images):
                write_png(task.files["class_image"], image, task.made_by, fsync=self._fsync)
