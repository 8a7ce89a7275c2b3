"""The training job: CLI, LoRA file and loss curve, bit-exact resume after SIGKILL, divergence, the stage.

All on the tiny model at 64 px, a few steps each. The step math itself is checked against diffusers in
test_train_parity.py.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.atomic import png_is_complete
from common.config import ConfigError, load_config
from common.sd.weights import read_weights
from producer.train_data import Draws, load_image
from producer.train_files import CHECKPOINT, LORA_BIN, LORA_SAFETENSORS, LOSS_CURVE, PROGRESS

REPO = Path(__file__).resolve().parents[1]
GOLDEN_KEYS = sorted(str(k) for k in np.load(REPO / "tests" / "golden" / "train.npz")["keys"])


@pytest.fixture(scope="module")
def style_dir(tmp_path_factory):
    """A style folder with three small images of different shapes (one needs the EXIF-free RGB path)."""
    folder = tmp_path_factory.mktemp("data") / "00"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(80, 64), (64, 96), (64, 64)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (70, 70), dtype=np.uint8), "L").save(folder / "images" / "gray.jpg")
    (folder / "images" / "notes.txt").write_text("not an image")
    return folder


def write_config(folder: Path, model: Path, **train) -> Path:
    settings = {"steps": 3, "checkpoint_every": 2, "log_every": 1, **train}
    path = folder / "train.yaml"
    path.write_text(f"model: {{path: {model}}}\nproducer: {{size: 64}}\nqueue: {{fsync: none}}\n"
                    f"train: {json.dumps(settings)}\n")
    return path


def cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "producer.train", *map(str, args), "--device", "cpu"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_cli_trains_a_lora_both_loaders_read_then_skips(tiny_model_dir, style_dir, tmp_path):
    config = write_config(tmp_path, tiny_model_dir, safetensors=True)
    out = tmp_path / "style" / "style_00"
    code, stdout, stderr = finish(cli("--config", config, "--style-dir", style_dir, "--out", out))
    assert code == 0, stderr
    assert "4 images at 64px" in stdout and "step 3/3 loss" in stdout
    state = read_weights(out / LORA_BIN)
    assert sorted(state) == GOLDEN_KEYS  # diffusers' key format for every attention projection
    assert all(v.dtype == np.float32 for v in state.values())
    assert max(np.abs(v).max() for k, v in state.items() if k.endswith(".up.weight")) > 0  # B has trained
    safe = read_weights(out / LORA_SAFETENSORS)
    assert all(np.array_equal(safe[k], state[k]) for k in state)
    from common.sd.lora import LoraSet
    from common.sd.pipeline import StableDiffusion
    sd = StableDiffusion.shared(tiny_model_dir, "float32", "cpu")
    assert len(LoraSet.read(out / LORA_BIN, sd.unet, sd.text_encoder).layers) == len(GOLDEN_KEYS) // 2
    assert png_is_complete(out / LOSS_CURVE)
    with Image.open(out / LOSS_CURVE) as curve:
        assert curve.format == "PNG" and curve.size[0] > 100
    assert not (out / ".checkpoint").exists()  # removed once the LoRA landed
    code, stdout, _ = finish(cli("--config", config, "--style-dir", style_dir, "--out", out))
    assert code == 0 and "exists" in stdout


def test_cli_bad_input_is_one_line_and_exit_2(tiny_model_dir, tmp_path):
    config = write_config(tmp_path, tiny_model_dir)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("train: {rank: 0}\n")
    for args, needle in (((config, tmp_path / "nope"), "images"), ((config, empty), "no training images"),
                         ((bad_config, empty), "train.rank")):
        code, _, stderr = finish(cli("--config", args[0], "--style-dir", args[1], "--out", tmp_path / "o"))
        assert code == 2 and needle in stderr and len(stderr.strip().splitlines()) == 1, stderr


RECIPE = {"text_encoder": {"rank": 2}, "targets": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.2", "conv1"],
          "alpha": 8, "lr_ratio_b": 4.0, "batch_size": 2, "gradient_accumulation": 2, "lr_scheduler": "cosine",
          "lr_warmup_steps": 2, "snr_gamma": 5.0, "noise_offset": 0.05, "prompt": "{caption}, in style_{style}"}


@pytest.fixture(scope="module")
def captioned_style_dir(style_dir, tmp_path_factory):
    """The style folder with a caption beside one of its images."""
    folder = tmp_path_factory.mktemp("captioned") / "00"
    shutil.copytree(style_dir, folder)
    (folder / "images" / "0.txt").write_text("a field of noise\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("recipe", [{}, RECIPE], ids=["jdiffusion", "every-option"])
def test_killed_run_resumes_from_its_checkpoint_to_the_same_lora_bit_for_bit(tiny_model_dir, style_dir,
                                                                             captioned_style_dir, tmp_path, recipe):
    config = write_config(tmp_path, tiny_model_dir, steps=6, safetensors=True, **recipe)
    style_dir = captioned_style_dir if recipe else style_dir
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    code, log, stderr = finish(cli("--config", config, "--style-dir", style_dir, "--out", whole))
    assert code == 0, stderr
    scratch = resumed / ".checkpoint"
    victim = cli("--config", config, "--style-dir", style_dir, "--out", resumed)
    deadline = time.time() + 600
    progress = {}
    while time.time() < deadline and victim.poll() is None:  # kill it after the step-2 checkpoint
        try:
            progress = json.loads((scratch / PROGRESS).read_text())
        except (OSError, ValueError):
            progress = {}
        if progress.get("step", 0) >= 3 and (scratch / CHECKPOINT).is_file():
            break
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    assert progress.get("steps") == 6 and 3 <= progress["step"] < 6, progress
    assert not (resumed / LORA_BIN).exists()
    code, stdout, stderr = finish(cli("--config", config, "--style-dir", style_dir, "--out", resumed))
    assert code == 0, stderr
    assert "resuming from step 2" in stdout or "resuming from step 4" in stdout, stdout
    assert (resumed / LORA_SAFETENSORS).read_bytes() == (whole / LORA_SAFETENSORS).read_bytes()
    a, b = read_weights(whole / LORA_BIN), read_weights(resumed / LORA_BIN)
    assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert not scratch.exists()
    if recipe:  # the options took effect: text-encoder and conv keys in the file, the captions in the log
        assert any(k.endswith("self_attn.q_proj.lora_linear_layer.up.weight") for k in a)
        assert a["unet.down_blocks.0.resnets.0.conv1.lora_A.weight"].ndim == 4
        assert "2 captioned prompts" in log


@pytest.fixture(scope="module")
def stage_config(tiny_model_dir, tmp_path_factory):
    def make(**train):
        return load_config(write_config(tmp_path_factory.mktemp("cfg"), tiny_model_dir, **train))
    return make


def task(style_dir, out: Path, made_by: bytes = None):
    return types.SimpleNamespace(style="00", style_dir=style_dir, files={"lora_file": out / "style_00" / LORA_BIN},
                                 scratch_dir=out / "queue" / "train-00", made_by=made_by)


def test_stage_beats_every_step_and_writes_the_lora(stage_config, style_dir, tmp_path):
    from producer.train_stage import TrainStage
    stage = TrainStage(stage_config(steps=2), "cpu")
    phases = []
    t = task(style_dir, tmp_path)
    stage.run([t], phases.append)
    assert [p for p in phases if re.fullmatch(r"train \d+/\d+", p)] == ["train 1/2", "train 2/2"]
    assert [p for p in phases if p.startswith("train encode")] == [f"train encode {i}/4" for i in (1, 2, 3, 4)]
    assert t.files["lora_file"].is_file() and (t.files["lora_file"].parent / LOSS_CURVE).is_file()
    assert not t.scratch_dir.exists()
    assert stage.sd.unet.attention_layers()["mid_block.attentions.0.transformer_blocks.0.attn1"].processor \
        .__class__.__name__ == "AttnProcessor"  # the LoRA processors are gone again


def test_a_lora_of_ours_made_by_another_recipe_is_retrained_kept_and_put_back(stage_config, style_dir, tmp_path):
    from common.identity import Identities
    from common.provenance import kept_path, lora_made_by, record
    from producer.train_stage import TrainStage
    stage = TrainStage(stage_config(steps=2), "cpu")
    first, second = record("recipe-a", "00", {}), record("recipe-b", "00", {})
    t = task(style_dir, tmp_path, first)
    stage.run([t], lambda phase: None)
    lora_a = t.files["lora_file"].read_bytes()
    assert lora_made_by(t.files["lora_file"], Identities().of(t.files["lora_file"])) == first
    stage.run([t], lambda phase: None)  # made by this record: skipped
    assert t.files["lora_file"].read_bytes() == lora_a

    stage.config = stage_config(steps=2, rank=2)
    phases = []
    stage.run([task(style_dir, tmp_path, second)], phases.append)
    assert "train 2/2" in phases and lora_made_by(t.files["lora_file"], Identities().of(t.files["lora_file"])) == second
    assert kept_path(t.files["lora_file"], first).read_bytes() == lora_a != t.files["lora_file"].read_bytes()

    phases = []
    stage.run([t], phases.append)  # back to the first recipe: put back, not trained
    assert not phases and t.files["lora_file"].read_bytes() == lora_a
    assert lora_made_by(t.files["lora_file"], Identities().of(t.files["lora_file"])) == first


def test_a_users_lora_is_never_overwritten(stage_config, style_dir, tmp_path):
    from common.provenance import record
    from producer.train_stage import TrainStage
    t = task(style_dir, tmp_path, record("recipe-a", "00", {}))
    t.files["lora_file"].parent.mkdir(parents=True)
    t.files["lora_file"].write_bytes(b"the user's LoRA")
    TrainStage(stage_config(steps=2), "cpu").run([t], lambda phase: None)
    assert t.files["lora_file"].read_bytes() == b"the user's LoRA"


def test_diverging_loss_fails_naming_style_and_step(stage_config, style_dir, tmp_path):
    from producer.train_loop import TrainingDiverged
    from producer.train_stage import TrainStage
    stage = TrainStage(stage_config(steps=3, lr=1e30), "cpu")
    t = task(style_dir, tmp_path)
    with pytest.raises(TrainingDiverged) as error:
        stage.run([t], lambda phase: None)
    message = str(error.value)
    assert isinstance(error.value, ValueError) and "\n" not in message
    assert "style 00" in message and "step 2" in message
    assert not t.files["lora_file"].exists()


def test_images_crop_or_stretch_to_the_size_in_minus_one_to_one(tmp_path):
    left_right = np.zeros((64, 128, 3), np.uint8)
    left_right[:, 64:] = 255
    left_right[:, 32:96, 0] = 128  # the centre band: what a centre crop keeps
    Image.fromarray(left_right).save(tmp_path / "wide.png")
    crop = load_image(tmp_path / "wide.png", 32)
    assert crop.shape == (3, 32, 32) and crop.dtype == np.float32
    assert np.allclose(crop[0][:, 1:-1], 128 / 127.5 - 1, atol=1e-6)  # the centre band (edges blend)
    stretch = load_image(tmp_path / "wide.png", 32, "stretch")
    assert stretch.shape == (3, 32, 32) and stretch.min() == -1.0 and stretch.max() == 1.0
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(tmp_path / "broken.png", 32)


def test_draws_shuffle_each_epoch_and_resume_exactly():
    draws = Draws(np.random.default_rng(0), 3, (4, 2, 2), 1000)
    seq = [draws.next() for _ in range(4)]
    assert sorted(d.image for d in seq[:3]) == [0, 1, 2]  # each epoch a permutation of every image
    saved = json.loads(json.dumps(draws.state()))  # checkpoints hold it as JSON
    ahead = [draws.next() for _ in range(5)]
    again = Draws(np.random.default_rng(123), 3, (4, 2, 2), 1000)
    again.restore(saved)
    for a, b in zip(ahead, (again.next() for _ in range(5))):
        assert a.image == b.image and a.timestep == b.timestep and 0 <= a.timestep < 1000
        assert a.noise.tobytes() == b.noise.tobytes() and a.posterior_noise.tobytes() == b.posterior_noise.tobytes()


def test_prior_draws_take_their_own_epochs_over_the_class_images_and_resume_exactly():
    draws = Draws(np.random.default_rng(0), 3, (4, 2, 2), 1000, n_class_images=2)
    seq = [(draws.next(), draws.next_prior()) for _ in range(2)]
    assert sorted(p.image for _, p in seq) == [0, 1]  # each class epoch a permutation of the class images
    saved = json.loads(json.dumps(draws.state()))
    ahead = [(draws.next(), draws.next_prior()) for _ in range(3)]
    again = Draws(np.random.default_rng(9), 3, (4, 2, 2), 1000, n_class_images=2)
    again.restore(saved)
    for pair, other in zip(ahead, ((again.next(), again.next_prior()) for _ in range(3))):
        for a, b in zip(pair, other):
            assert a.image == b.image and a.timestep == b.timestep and a.noise.tobytes() == b.noise.tobytes()


def test_prior_preservation_trains_beside_the_class_images(stage_config, style_dir, tmp_path, capsys):
    from producer.train_stage import TrainStage
    classes = tmp_path / "prior" / "a painting~0"
    classes.mkdir(parents=True)
    rng = np.random.default_rng(4)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(classes / f"{i:04d}.png")
    prior = {"prompt": "a painting", "images": 2, "weight": 1.0}
    stage = TrainStage(stage_config(steps=2, prior=prior), "cpu")
    with_prior = task(style_dir, tmp_path / "with")
    with_prior.files["class_images"] = classes
    stage.run([with_prior], lambda phase: None)
    assert "beside 2 class images of 'a painting' (weight 1.0)" in capsys.readouterr().out
    stage.config = stage_config(steps=2)
    without = task(style_dir, tmp_path / "without")
    stage.run([without], lambda phase: None)
    a, b = read_weights(with_prior.files["lora_file"]), read_weights(without.files["lora_file"])
    assert sorted(a) == sorted(b) and any(not np.array_equal(a[k], b[k]) for k in a)  # the class loss counted
    stage.config = stage_config(steps=2, prior=dict(prior, images=3))
    short = task(style_dir, tmp_path / "short")
    short.files["class_images"] = classes
    with pytest.raises(FileNotFoundError, match="2 class images, train.prior.images asks for 3") as error:
        stage.run([short], lambda phase: None)
    assert "\n" not in str(error.value) and str(classes) in str(error.value)


@pytest.mark.parametrize("key,value,needle", [("rank", 0, "train.rank"), ("resize", "fit", "train.resize"),
                                              ("prompt", "style_{name}", "train.prompt"), ("size", 100, "train.size"),
                                              ("adam_beta2", 1.0, "train.adam_beta2"), ("lr", 0.0, "train.lr")])
def test_train_config_rejects_bad_values(key, value, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(overrides={f"train.{key}": value})


def test_train_config_defaults_are_jdiffusions(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lr: 1e-4\n  adam_epsilon: 1e-8\n")  # YAML 1.1 reads these as text
    t = load_config(tmp_path / "c.yaml").train
    assert load_config(REPO / "configs" / "default.yaml").train == t == load_config().train
    assert (t.steps, t.lr, t.rank, t.seed, t.prompt.format(style="07")) == (500, 1e-4, 4, 0, "style_07")
    assert (t.adam_beta1, t.adam_beta2, t.adam_weight_decay, t.adam_epsilon) == (0.9, 0.999, 1e-2, 1e-8)
    assert t.size is None and t.checkpoint_every == 50


def test_captions_fill_the_prompt_and_bad_ones_are_one_line_errors(tiny_model_dir, tmp_path):
    from common.sd.tokenizer import CLIPTokenizer
    from common.devkit.assets.clip_bpe import write_tokenizer_folder
    from common.captions import image_prompts, tokenizer_too_long
    from common.style_files import training_images
    images = tmp_path / "00" / "images"
    images.mkdir(parents=True)
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8)).save(images / f"{name}.png")
    (images / "a.txt").write_text("  a red fox \n", encoding="utf-8")
    files = training_images(tmp_path / "00")
    write_tokenizer_folder(tmp_path / "tok", pad_token="!")
    too_long = tokenizer_too_long(CLIPTokenizer.from_folder(tmp_path / "tok"))
    template = "{caption}, in style_{style}"
    assert image_prompts(files, template, "00", too_long) == ["a red fox, in style_00", "in style_00", "in style_00"]
    assert image_prompts(files, "style_{style}", "00", too_long) == ["style_00"] * 3  # no {caption}: ignored
    (images / "b.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="b.txt: the caption is not UTF-8") as e:
        image_prompts(files, template, "00", too_long)
    assert "\n" not in str(e.value)
    (images / "b.txt").write_text(" ".join(["fox"] * 80), encoding="utf-8")
    with pytest.raises(ValueError, match="b.png: its training prompt .* longer than the tokenizer") as e:
        image_prompts(files, template, "00", too_long)
    assert "\n" not in str(e.value)
    # the same as a launch check, from the config and the model folder's tokenizer (no Jittor)
    from common.dataset import DatasetError, Style
    from common.captions import check_captions
    config = load_config(overrides={"model.path": str(tiny_model_dir), "train.prompt": template})
    with pytest.raises(DatasetError, match="b.png: its training prompt"):
        check_captions(config, Style("00", tmp_path / "00", ()))
    (images / "b.txt").write_text("a blue fox", encoding="utf-8")
    check_captions(config, Style("00", tmp_path / "00", ()))


@pytest.mark.parametrize("key,value,needle", [
    ("targets", ["to_q", "attn"], "train.targets"), ("targets", [], "train.targets"),
    ("alpha", 0, "train.alpha"), ("text_encoder", {"rank": 0}, "train.text_encoder"),
    ("text_encoder", {"rnk": 2}, "train.text_encoder: unknown key .rnk."), ("lr_ratio_b", 0.0, "train.lr_ratio_b"),
    ("batch_size", 0, "train.batch_size"), ("gradient_accumulation", 0, "train.gradient_accumulation"),
    ("lr_scheduler", "linear", "train.lr_scheduler"), ("lr_warmup_steps", 501, "train.lr_warmup_steps"),
    ("snr_gamma", -1.0, "train.snr_gamma"), ("noise_offset", -0.1, "train.noise_offset"),
    ("prompt", "{caption} {name}", "train.prompt"), ("prior", {"images": 10}, "train.prior.prompt must be set"),
    ("prior", {"prompt": "a {name}"}, "train.prior.prompt"),
    ("prior", {"prompt": "x", "images": 0}, "train.prior.images"),
    ("prior", {"prompt": "x", "weight": 0}, "train.prior.weight"),
    ("prior", {"promt": "x"}, "train.prior: unknown key")])
def test_recipe_options_reject_bad_values(key, value, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(overrides={f"train.{key}": value})


@pytest.mark.parametrize("name", ["jdiffusion", "strong"])
def test_recipe_files_pass_the_launch_checks(name, tiny_model_dir, tmp_path, capsys):
    """The recipe's train: section under a run's own paths: the launcher's checks accept it (a dry launch:
    config, stage graph, model and dataset checks), and a broken copy is a one-line exit 2."""
    import yaml
    from queue_fixtures import graph_of, make_dataset, one_line_exit
    recipe = REPO / "configs" / "recipes" / f"{name}.yaml"
    config = load_config(recipe)
    default = load_config()
    assert config.pixel_hash() == default.pixel_hash()  # train settings are out of it (docs/queue.md §11)
    if name == "jdiffusion":  # today's baseline: the defaults, key for key, so the LoRAs' records too
        assert config.train == default.train and config.train_hash() == default.train_hash()
    else:
        assert config.train_hash() != default.train_hash()  # a LoRA trained by another recipe is retrained
        t = config.train
        assert t.text_encoder is not None and "{caption}" in t.prompt and len(t.targets) > 4 and t.lr_ratio_b > 1
    run = {**yaml.safe_load(recipe.read_text()), "dataset": str(make_dataset(tmp_path / "data")),
           "output": str(tmp_path / "out"), "queue_dir": str(tmp_path / "q"), "model": {"path": str(tiny_model_dir)},
           "lora": {"dir": str(tmp_path / "loras")}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    loaded, graph, nodes, _ = graph_of(path)
    assert loaded.train == config.train and graph.stages[0] == "train"
    run["train"]["targets"] = run["train"].get("targets", []) + ["to_x"]
    path.write_text(yaml.safe_dump(run))
    one_line_exit(capsys, ["--config", path, "--gpus", "cpu"], str(path), "train.targets")
