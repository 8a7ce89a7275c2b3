"""The producer stage on the tiny random model (CPU, float32): determinism, batching, LoRA, outputs."""
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.config import load_config
from common.jittor_env import load_jittor
from common.stage import Task

jt = load_jittor()

STEPS = 3


@pytest.fixture
def tiny(tiny_model_dir) -> Path:
    """The session's tiny model; its LoRAs: style_00 .safetensors, style_01 JDiffusion's .bin."""
    return tiny_model_dir


def make_config(tiny: Path, lora=None, **producer):
    settings = {"model.path": str(tiny), "model.dtype": "float32", "lora.dir": str(tiny / "loras"),
                "producer.size": 128, "producer.steps": STEPS, "queue.fsync": "none"}
    settings.update({f"lora.{k}": v for k, v in (lora or {}).items()})
    settings.update({f"producer.{k}": v for k, v in producer.items()})
    return load_config(None, settings)


def make_stage(tiny: Path, lora=None, **producer):
    from producer.stage import ProducerStage
    return ProducerStage(make_config(tiny, lora, **producer), "cpu")


def make_task(out: Path, prompt: str, seed: int, style: str = "00") -> Task:
    name = prompt.replace(" ", "_")
    return Task(id=f"{style}-{name}", style=style, prompt=prompt, name=name, seed=seed,
                style_dir=out / "data" / style, files={"content_png": out / style / "content" / f"{name}.png",
                                                       "content_latent": out / "queue" / f"{style}-{name}.npy"})


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


PROMPTS = [("Dolphin", 11), ("Lighthouse", 22), ("Mountain", 33)]


def run(stage, out: Path, style="00", prompts=PROMPTS):
    tasks = [make_task(out, p, s, style) for p, s in prompts]
    stage.run(tasks, lambda phase: None)
    return tasks


def test_same_seed_gives_the_same_content_image_bytes(tiny, tmp_path):
    stage = make_stage(tiny)
    a = run(stage, tmp_path / "a", prompts=PROMPTS[:1])[0]
    b = run(make_stage(tiny), tmp_path / "b", prompts=PROMPTS[:1])[0]
    assert a.files["content_png"].read_bytes() == b.files["content_png"].read_bytes()
    assert np.array_equal(np.load(a.files["content_latent"]), np.load(b.files["content_latent"]))


def test_batched_equals_one_at_a_time(tiny, tmp_path):
    batched = run(make_stage(tiny, batch=3), tmp_path / "b3")
    single = run(make_stage(tiny, batch=1), tmp_path / "b1")
    for b, s in zip(batched, single):
        zb, zs = np.load(b.files["content_latent"]), np.load(s.files["content_latent"])
        assert np.abs(zb - zs).max() <= 1e-4 * np.abs(zs).max()
        assert np.abs(pixels(b.files["content_png"]) - pixels(s.files["content_png"])).max() <= 1


def test_different_seeds_give_different_images(tiny, tmp_path):
    one = run(make_stage(tiny), tmp_path / "1", prompts=[("Dolphin", 1)])[0]
    two = run(make_stage(tiny), tmp_path / "2", prompts=[("Dolphin", 2)])[0]
    assert np.abs(np.load(one.files["content_latent"]) - np.load(two.files["content_latent"])).max() > 1e-2


def test_image_seeds_differ_across_prompts_and_styles_and_repeat_for_the_same_ones():
    from producer.generate import image_seed
    seeds = {image_seed(0, style, prompt) for style in ("00", "01") for prompt in ("Dolphin", "Cat", "Tree")}
    assert len(seeds) == 6
    assert image_seed(0, "00", "Dolphin") == image_seed(0, "00", "Dolphin") != image_seed(1, "00", "Dolphin")
    assert all(0 <= s < 2 ** 63 for s in seeds)


def test_prompts_sharing_the_base_seed_get_different_images(tiny, tmp_path):
    tasks = run(make_stage(tiny, batch=3), tmp_path, prompts=[(p, 0) for p, _ in PROMPTS])
    latents = [np.load(t.files["content_latent"]) for t in tasks]
    for i in range(len(latents)):
        for j in range(i + 1, len(latents)):
            assert np.abs(latents[i] - latents[j]).max() > 1e-2


def test_the_latent_written_decodes_to_the_png_written(tiny, tmp_path):
    stage = make_stage(tiny)
    task = run(stage, tmp_path, prompts=PROMPTS[:1])[0]
    latent = np.load(task.files["content_latent"])
    assert latent.dtype == np.float32 and latent.shape == (4, 16, 16)
    with jt.no_grad():
        decoded = stage.sd.decode_latents(jt.array(latent[None]))
    decoded = decoded.numpy() if hasattr(decoded, "numpy") else decoded
    assert np.array_equal(decoded[0].astype(np.int16), pixels(task.files["content_png"]))


def test_a_lora_changes_the_output_and_a_zero_scale_lora_does_not(tiny, tmp_path):
    with_lora = run(make_stage(tiny), tmp_path / "lora", prompts=PROMPTS[:1])[0]
    zero = run(make_stage(tiny, {"scale": 0.0}), tmp_path / "zero", prompts=PROMPTS[:1])[0]
    base = run(make_stage(tiny, {"dir": str(tmp_path / "none"), "missing": "warn"}), tmp_path / "base",
               prompts=PROMPTS[:1])[0]
    z_lora, z_zero, z_base = (np.load(t.files["content_latent"]) for t in (with_lora, zero, base))
    assert np.abs(z_lora - z_base).max() > 1e-3
    assert np.abs(z_zero - z_base).max() <= 1e-5


def test_switching_styles_swaps_the_lora_and_back_without_drift(tiny, tmp_path):
    stage = make_stage(tiny)
    first = run(stage, tmp_path / "1", "00", PROMPTS[:1])[0]
    other = run(stage, tmp_path / "2", "01", PROMPTS[:1])[0]
    again = run(stage, tmp_path / "3", "00", PROMPTS[:1])[0]
    assert np.abs(np.load(first.files["content_latent"]) - np.load(other.files["content_latent"])).max() > 1e-3
    assert np.abs(np.load(first.files["content_latent"]) - np.load(again.files["content_latent"])).max() <= 1e-5


@pytest.mark.parametrize("missing", ["error", "train"])
def test_a_missing_lora_is_an_error_naming_the_folder_and_the_fix(tiny, tmp_path, missing):
    stage = make_stage(tiny, {"dir": str(tmp_path / "nowhere"), "missing": missing})
    with pytest.raises(FileNotFoundError) as err:
        run(stage, tmp_path, prompts=PROMPTS[:1])
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere" / "style_00") in message and "lora.missing: warn" in message
    assert not list(tmp_path.rglob("*.png"))


def test_a_missing_lora_with_warn_uses_the_base_model_and_warns_once_per_style(tiny, tmp_path):
    stage = make_stage(tiny, {"dir": str(tmp_path / "nowhere"), "missing": "warn"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(stage, tmp_path / "a", "00", PROMPTS[:1])
        run(stage, tmp_path / "b", "00", PROMPTS[:1])
        run(stage, tmp_path / "c", "01", PROMPTS[:1])
    found = [str(w.message) for w in caught if "no LoRA" in str(w.message)]
    assert len(found) == 2 and "style_00" in found[0] and "style_01" in found[1]


def test_the_jdiffusion_bin_name_is_found_first(tiny, tmp_path):
    from common.style_files import lora_path
    folder = tmp_path / "style" / "style_07"
    folder.mkdir(parents=True)
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    (folder / "pytorch_lora_weights.bin").write_bytes(b"x")
    config = make_config(tiny, {"dir": str(tmp_path / "style")})
    assert lora_path(config, "07") == folder / "pytorch_lora_weights.bin"
    assert lora_path(config, "08") is None


def test_beat_is_called_at_least_once_per_step(tiny, tmp_path):
    beats = []
    stage = make_stage(tiny, batch=1)
    stage.run([make_task(tmp_path, p, s) for p, s in PROMPTS[:2]], beats.append)
    assert len(beats) >= 2 * STEPS  # two batches


def nan_lora(tiny: Path, folder: Path) -> Path:
    """Style 00's LoRA with every value NaN, as lora.dir/style_00/ under `folder`."""
    from safetensors.numpy import load_file, save_file
    source = tiny / "loras" / "style_00" / "pytorch_lora_weights.safetensors"
    target = folder / "style_00" / source.name
    target.parent.mkdir(parents=True)
    save_file({k: np.full_like(v, np.nan) for k, v in load_file(str(source)).items()}, str(target))
    return target


def test_a_lora_of_nans_fails_the_task_naming_it_and_writes_nothing(tiny, tmp_path):
    path = nan_lora(tiny, tmp_path / "loras")
    stage = make_stage(tiny, {"dir": str(tmp_path / "loras")}, batch=2)
    with pytest.raises(ValueError) as err:
        run(stage, tmp_path / "out", prompts=PROMPTS[:2])
    message = str(err.value)
    assert "\n" not in message and "NaN/inf" in message and str(path) in message
    assert "style 00, prompt 'Dolphin'" in message and "style 00, prompt 'Lighthouse'" in message
    assert not (tmp_path / "out").exists()


def test_class_images_are_the_base_models_whatever_lora_the_process_merged(tiny, tmp_path):
    """The prior stage (prior preservation's class images) samples as generation does, without a LoRA,
    and writes its record into the PNG."""
    from common.provenance import png_made_by
    from producer.generate import generate, image_seed
    from producer.prior_stage import PriorStage
    stage = PriorStage(make_config(tiny), "cpu")
    group, prompt = "a painting~0", "a painting"
    stage.sd.set_lora(None)
    _, base = generate(stage.sd, [prompt], [image_seed(5, group, prompt)], size=128, steps=STEPS)
    stage.sd.set_lora(tiny / "loras" / "style_00" / "pytorch_lora_weights.safetensors")  # as a gen batch leaves it
    task = Task(id="c5", style=group, prompt=prompt, name="0005", seed=5, style_dir=tmp_path,
                files={"class_image": tmp_path / "prior" / "0005.png"}, made_by=b'{"plan":"x"}')
    stage.run([task], lambda phase: None)
    assert np.array_equal(base[0].astype(np.int16), pixels(task.files["class_image"]))
    assert png_made_by(task.files["class_image"]) == task.made_by
