"""Stage 0: train each style's DreamBooth LoRA where the producer looks for it.

A task names its style, its style folder (DATASET/STYLE with images/), the LoRA's target file (its file
"lora_file") and a scratch folder inside the queue folder, which holds the job's checkpoint and
progress.json: a worker killed mid-training resumes there. Training runs in float32 on the model
`StableDiffusion.shared` gives this process (the producer on the CPU shares it); the LoRA processors are
removed again afterwards. With `train.pack` the one task (group "pack") trains one LoRA over every style's
images (common/pack.py).
"""
from typing import List

from common.config import RunConfig
from common.pack import pack_styles
from common.stage import style_of
from common.stage_model import load_model
from producer.train_job import train_styles


class TrainStage:
    """Trains the LoRA of each task (tasks of one style; a LoRA already written is skipped)."""
    kind = "train"

    def __init__(self, config: RunConfig, device: str):
        self.config = config
        self.sd = load_model(config, device, "float32")  # training runs in float32, as JDiffusion's does
        self._fsync = config.queue.fsync

    @property
    def size(self) -> int:
        return self.config.train_size

    def run(self, tasks: List, beat) -> None:
        if not tasks:
            return
        style_of(tasks)
        for task in tasks:
            if self.config.train.pack:
                dataset = task.style_dir.parent
                sources = [(name, dataset / name) for name in pack_styles(dataset)]
                self.train_pack(sources, task.files["lora_file"], task.scratch_dir, beat, task.made_by)
            else:
                self.train(task.style, task.style_dir, task.files["lora_file"], task.scratch_dir, beat, task.made_by,
                           task.files.get("class_images"))

    def train(self, style: str, style_dir, lora_file, scratch_dir, beat=lambda phase: None, made_by=None,
              class_dir=None) -> str:
        """Train (resume, skip, or restore) one style's LoRA; returns "trained", "skipped" or "restored".
        `made_by`: the record it carries (docs/queue.md §11); without one an existing LoRA is kept.
        `class_dir`: the class images, with prior preservation (the prior stage's, common/prior.py)."""
        return train_styles(self.sd, self.config.train, f"style {style}", [(style, style_dir)], lora_file, scratch_dir,
                            size=self.size, fsync=self._fsync, beat=beat, log=lambda line: print(line, flush=True),
                            made_by=made_by, class_dir=class_dir)

    def train_pack(self, sources, lora_file, scratch_dir, beat=lambda phase: None, made_by=None) -> str:
        """Train one LoRA over every (style, style folder) of `sources`, drawn round-robin (docs/training.md)."""
        return train_styles(self.sd, self.config.train, "pack", sources, lora_file, scratch_dir, size=self.size,
                            fsync=self._fsync, beat=beat, log=lambda line: print(line, flush=True), made_by=made_by)
