"""Stand-in stages for the job-system tests and benchmarks: no Jittor, milliseconds per task.

`graph` (config `stages.graph: common.devkit.fake_stage:graph`) is jstyleid's stage graph with these
stand-ins and without the launch checks that need a model.

FakePrior writes a tiny class image derived from its task id; FakeTrain refuses to run before its style's
class images are all there (with train.prior), then writes a LoRA file naming its style after
FAKE_TRAIN_STEPS beats (its progress.json says the
step, and a killed job resumes from it, as the real trainer resumes from its checkpoint); FakeGen refuses
to run before its style's LoRA exists when LoRAs are trained here, then writes a tiny content PNG and a
latent derived from the task id; FakeSty reads the latent and writes the stylized PNG, so a lost or
mixed-up hand-off shows in the output bytes.
Environment knobs (read per call, so forked test workers can set them):
  JSTYLEID_FAKE_MS   "LO-HI" or "MS": sleep a seeded time per task (default 5-20; "0" for none)
  JSTYLEID_POISON    a prompt on which the stage calls os.abort() (a job that always kills its worker)
  JSTYLEID_HANG      "PROMPT:MARKER": hang without beating on PROMPT while the file MARKER does not exist
                     (it is created first, so only the first attempt hangs)
  JSTYLEID_CRASH     crash points `mid_train`, `mid_output` and `after_output` (see common.jobqueue.crash)
"""
import hashlib
import json
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from common.atomic import write_bytes, write_npy
from common.graph import Graph, jstyleid_specs, without_checks
from common.identity import Identities
from common.jobqueue import crash
from common.prior import class_images
from common.provenance import place_lora, prepare_lora, write_png as write_result

SIZE = 8
FAKE_TRAIN_STEPS = 4


def fake_lora(style: str, recipe: str = "") -> bytes:
    """A stand-in LoRA: its bytes name the style and the training settings' hash (a new recipe, new bytes)."""
    return f"fake LoRA of style {style} {recipe}\n".encode()


def fake_latent(task_id: str) -> np.ndarray:
    seed = int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal((4, SIZE, SIZE)).astype(np.float32)


def fake_content(latent: np.ndarray) -> np.ndarray:
    return np.clip(latent[:3].transpose(1, 2, 0) * 40 + 128, 0, 255).astype(np.uint8)


def fake_output(latent: np.ndarray, style: str) -> np.ndarray:
    shift = int(hashlib.sha256(style.encode()).hexdigest()[:2], 16)
    return ((fake_content(latent).astype(np.int32) + shift) % 256).astype(np.uint8)


def _pause(task_id: str):
    spec = os.environ.get("JSTYLEID_FAKE_MS", "5-20")
    lo, _, hi = spec.partition("-")
    lo, hi = float(lo), float(hi or lo)
    if hi > 0:
        time.sleep(random.Random(task_id).uniform(lo, hi) / 1000)


def _faults(task, beat):
    if task.prompt == os.environ.get("JSTYLEID_POISON"):
        os.abort()
    prompt, _, marker = os.environ.get("JSTYLEID_HANG", "").partition(":")
    if prompt and task.prompt == prompt and marker and not Path(marker).exists():
        Path(marker).touch()
        while True:  # hung: no beats, so the lease expires and the launcher kills us
            time.sleep(3600)


class FakePrior:
    kind = "prior"

    def __init__(self, config, device: str):
        self.device, self.fsync = device, config.queue.fsync

    def run(self, tasks, beat):
        for task in tasks:
            beat("working")
            _pause(task.id)
            write_result(task.files["class_image"], fake_content(fake_latent(task.id)), task.made_by, fsync=self.fsync)
            crash.point("after_output")


class FakeTrain:
    kind = "train"

    def __init__(self, config, device: str):
        self.device, self.fsync = device, config.queue.fsync
        self.recipe, self.identities = config.train_hash(), Identities()
        self.prior = config.train.prior

    def run(self, tasks, beat):
        for task in tasks:
            if self.prior is not None:  # a one-line error when the class images are not all there
                class_images(task.files["class_images"], self.prior.images)
            todo, old = prepare_lora(task.files["lora_file"], task.made_by, self.identities.of, fsync=self.fsync)
            if todo != "train":
                print(f"train style {task.style}: {task.files['lora_file']} {todo}", flush=True)
                continue
            progress = task.scratch_dir / "progress.json"
            try:
                step = json.loads(progress.read_text())["step"]  # resume where a killed attempt stopped
            except (OSError, ValueError, KeyError):
                step = 0
            if step:
                print(f"train style {task.style}: resuming at step {step}", flush=True)
            while step < FAKE_TRAIN_STEPS:
                beat(f"train {step + 1}/{FAKE_TRAIN_STEPS}")
                _pause(f"{task.id}-{step}")
                step += 1
                write_bytes(progress, json.dumps({"step": step, "steps": FAKE_TRAIN_STEPS, "loss": 1.0 / step})
                            .encode(), fsync=False)
                crash.point("mid_train")
            place_lora(task.files["lora_file"], fake_lora(task.style, self.recipe), task.made_by, old, fsync=self.fsync)


class FakeGen:
    kind = "gen"

    def __init__(self, config, device: str):
        self.device, self.fsync = device, config.queue.fsync
        self.trained = config.lora.missing == "train"

    def run(self, tasks, beat):
        for task in tasks:
            lora = task.files["lora_file"]
            if self.trained and not lora.is_file():
                raise FileNotFoundError(f"{lora}: generation ran before its style's LoRA was trained")
            beat("working")
            _faults(task, beat)
            _pause(task.id)
            latent = fake_latent(task.id)
            write_npy(task.files["content_latent"], latent, fsync=self.fsync, replace=True)
            crash.point("mid_output")
            write_result(task.files["content_png"], fake_content(latent), task.made_by, fsync=self.fsync)
            crash.point("after_output")


class FakeSty:
    kind = "sty"

    def __init__(self, config, device: str):
        self.device, self.fsync = device, config.queue.fsync

    def run(self, tasks, beat):
        for task in tasks:
            beat("working")
            _pause(task.id)
            latent = np.load(task.files["content_latent"])
            write_result(task.files["output_png"], fake_output(latent, task.style), task.made_by, fsync=self.fsync)
            crash.point("after_output")


class NoDevice:
    """A stage whose device is unusable: the worker must exit 3 (tests of the supervisor's parking)."""
    kind = "gen"

    def __init__(self, config, device: str):
        from common.stage import DeviceError
        raise DeviceError(f"no usable device for {device}")


FAKES = {"prior": "common.devkit.fake_stage:FakePrior", "train": "common.devkit.fake_stage:FakeTrain",
         "gen": "common.devkit.fake_stage:FakeGen", "sty": "common.devkit.fake_stage:FakeSty"}


def _fake_specs(config, impls: dict):
    specs = without_checks(jstyleid_specs(config), impls)
    return [replace(s, steps=FAKE_TRAIN_STEPS) if s.name == "train" else s for s in specs]


def graph(config) -> Graph:
    """jstyleid's stages run by the stand-ins above."""
    return Graph(config, _fake_specs(config, FAKES))


def no_device_graph(config) -> Graph:
    """As `graph`, but generation cannot get its device (the worker must exit 3)."""
    return Graph(config, _fake_specs(config, dict(FAKES, gen="common.devkit.fake_stage:NoDevice")))
