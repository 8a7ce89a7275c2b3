"""Train one style's LoRA into its file, resumably: the loop around `LoraTrainer`.

Every `train.checkpoint_every` steps the job saves, atomically, in its checkpoint folder: the LoRA, both
Adam moments, the step, the draw Generator's state and epoch order, and the losses so far. A process
killed at any moment restarts from its last checkpoint and, since every random draw comes from that
Generator, ends with the same LoRA bit for bit as a run never interrupted (on the same device). A
checkpoint made with other settings or other images is not resumed. progress.json in the same folder
says {"step", "steps", "loss"} after every step. At the end the loss curve and the LoRA land beside each
other (the .bin last) and the checkpoint folder is removed. A LoRA packed over many styles (`train.pack`)
is the same loop over every style's images, each with its own prompt, drawn round-robin across the styles.
"""
import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from common.captions import image_prompts, tokenizer_too_long
from common.identity import Identities
from common.provenance import prepare_lora
from common.prior import class_images as prior_images
from producer.train_data import Draws, RoundRobinDraws, load_image, load_images
from producer.train_files import (CHECKPOINT, LOSS_CURVE, load_checkpoint, save_checkpoint, write_lora,
                                  write_loss_curve, write_progress)

# Settings that do not change the trained values.
_NOT_IN_FINGERPRINT = ("checkpoint_every", "log_every", "safetensors", "size")


def fingerprint(train, size: int, images: np.ndarray, model: str, prompts: list, class_images=None,
                class_prompt: str = None) -> str:
    """A hash of everything the trained values depend on: settings, the prepared images and their prompts,
    the class images and their prompt (prior preservation), the model."""
    settings = {k: v for k, v in dataclasses.asdict(train).items() if k not in _NOT_IN_FINGERPRINT}
    described = {"train": settings, "size": size, "model": model, "prompts": prompts}
    if class_images is not None:
        described["class_prompt"] = class_prompt
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(images, np.float32).tobytes())
    if class_images is not None:
        digest.update(np.ascontiguousarray(class_images, np.float32).tobytes())
    return digest.hexdigest()[:16]


def train_styles(sd, train, label: str, sources: list, lora_file, scratch_dir, *, size: int, fsync: bool,
                 beat=lambda phase: None, log=print, made_by: bytes = None, class_dir=None) -> str:
    """Train (or resume, or skip) one LoRA into `lora_file` over the images of each (style, style folder)
    of `sources` (one, or every style with `train.pack`), each image with its style's prompt; returns
    "trained", "skipped" or "restored". `label` names it in the log ("style 00", "pack"). With `made_by`
    (the record of this recipe, images and model; docs/queue.md §11) a LoRA of ours made otherwise is
    trained again (kept beside, or put back if kept for `made_by`); a LoRA without our record, or any LoRA
    when there is no `made_by`, is the user's and is kept. With `train.prior` (one style), the first
    `train.prior.images` images of `class_dir` are the class images (common/prior.py)."""
    from producer.train_loop import LoraTrainer, TrainingDiverged  # imports Jittor
    lora_file, scratch_dir = Path(lora_file), Path(scratch_dir)
    todo, old = ("keep" if lora_file.is_file() else "train"), None
    if made_by is not None:
        todo, old = prepare_lora(lora_file, made_by, Identities().of, fsync=fsync)
    if todo != "train":
        shutil.rmtree(scratch_dir, ignore_errors=True)  # a job killed after the LoRA landed
        log(f"train {label}: {lora_file} " + ("exists, skipping" if todo == "keep" else
                                                    "kept from an earlier run with these settings, put back"))
        return "skipped" if todo == "keep" else "restored"
    too_long = tokenizer_too_long(sd.tokenizer)
    files, images, prompts, sizes = [], [], [], []
    for style, style_dir in sources:
        style_files, style_images = load_images(style_dir, size, train.resize)
        files += style_files
        images.append(style_images)
        prompts += image_prompts(style_files, train.prompt, style, too_long)
        sizes.append(len(style_files))
    images = np.concatenate(images)
    class_images = class_prompt = None
    if train.prior is not None:
        class_prompt = train.prior.prompt.format(style=sources[0][0])
        class_images = np.stack([load_image(p, size, train.resize) for p in
                                 prior_images(class_dir, train.prior.images)])
    rng = np.random.default_rng(train.seed)
    sd.set_lora(None)  # train on the base weights, whatever LoRA this process merged before
    trainer = LoraTrainer(sd, train, rng, sources[0][0] if len(sources) == 1 else "pack")
    trainer.set_data(images, prompts, beat, class_images, class_prompt)
    if len(sources) == 1:
        draws = Draws(rng, len(images), trainer.latent_shape, trainer.num_timesteps, offset=train.noise_offset > 0,
                      n_class_images=0 if class_images is None else len(class_images))
    else:
        draws = RoundRobinDraws(rng, sizes, trainer.latent_shape, trainer.num_timesteps, train.noise_offset > 0)
    mark = fingerprint(train, size, images, f"{sd.folder}:{sd.dtype}", prompts, class_images, class_prompt)
    losses = _resume(trainer, draws, scratch_dir, mark, label, log)
    n = train.steps
    if trainer.step_count == 0:
        distinct = len(set(prompts))
        said = f"{distinct} captioned prompts, e.g. {prompts[0]!r}" if distinct > 1 else f"prompt {prompts[0]!r}"
        if class_images is not None:
            said += f", beside {len(class_images)} class images of {class_prompt!r} (weight {train.prior.weight})"
        if len(sources) > 1:
            said = f"{distinct} prompts over {len(sources)} styles drawn in turn, e.g. {prompts[0]!r}"
        log(f"train {label}: {len(files)} images at {size}px, {n} steps, {said}")
    trainer.lora.attach()
    started, first = time.perf_counter(), trainer.step_count
    try:
        while trainer.step_count < n:
            instance = [draws.next() for _ in range(trainer.samples_per_step)]
            loss = trainer.step(instance, [draws.next_prior() for _ in instance] if class_images is not None else ())
            losses.append(loss)
            k = trainer.step_count
            beat(f"train {k}/{n}")
            write_progress(scratch_dir, k, n, loss)
            if k % train.log_every == 0 or k == n:
                rate = (time.perf_counter() - started) / (k - first)
                log(f"train {label}: step {k}/{n} loss {loss:.5f} "
                    f"(mean of last {min(train.log_every, len(losses))}: "
                    f"{float(np.mean(losses[-train.log_every:])):.5f}; {rate:.2f} s/step)")
            if k % train.checkpoint_every == 0 and k < n:
                save_checkpoint(scratch_dir, trainer.state(), {"fingerprint": mark, "draws": draws.state(),
                                                               "losses": losses}, fsync=fsync)
    finally:
        trainer.lora.detach()
    state = trainer.lora.file_state()
    bad = next((k for k, v in state.items() if not np.isfinite(v).all()), None)
    if bad is not None:
        raise TrainingDiverged(f"{label}: training diverged by step {n} ({bad} is not finite); "
                               "lower train.lr or check the style's images")
    write_loss_curve(losses, lora_file.with_name(LOSS_CURVE), fsync=fsync, title=label)
    write_lora(state, lora_file, fsync=fsync, safetensors=train.safetensors, made_by=made_by, old=old)
    shutil.rmtree(scratch_dir, ignore_errors=True)
    log(f"train {label}: wrote {lora_file}")
    return "trained"


def _resume(trainer, draws, scratch_dir: Path, mark: str, label: str, log) -> list:
    """Load the folder's checkpoint into the trainer and draws if it fits; returns the losses so far."""
    if not (scratch_dir / CHECKPOINT).exists():
        return []
    found = load_checkpoint(scratch_dir)
    if found is None:
        log(f"train {label}: the checkpoint in {scratch_dir} is unreadable; starting from step 0")
        return []
    state, meta = found
    if meta.get("fingerprint") != mark:
        log(f"train {label}: the checkpoint in {scratch_dir} was made with other settings, images or "
            "model; starting from step 0")
        return []
    trainer.restore(state)
    draws.restore(meta["draws"])
    log(f"train {label}: resuming from step {trainer.step_count} ({scratch_dir})")
    return [float(x) for x in meta["losses"]]
