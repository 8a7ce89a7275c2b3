"""The consumer stage on the tiny random model (CPU, fp32): outputs, determinism, style reuse, inputs."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.config import load_config
from common.jittor_env import load_jittor
from common.stage import Task

jt = load_jittor()

STEPS = 3


def make_config_settings(tiny_model_dir) -> dict:
    return {"model.path": str(tiny_model_dir), "model.dtype": "float32", "consumer.size": 128,
            "consumer.steps": STEPS, "queue.fsync": "none"}


def make_config(tiny_model_dir, **consumer):
    settings = make_config_settings(tiny_model_dir)
    settings.update({f"consumer.{k}": v for k, v in consumer.items()})
    return load_config(None, settings)


def make_stage(tiny_model_dir, **consumer):
    from consumer.stage import ConsumerStage
    return ConsumerStage(make_config(tiny_model_dir, **consumer), "cpu")


def _image(seed, size):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def dataset(tmp_path) -> Path:
    """tmp/data/00/images/{a,b}.png (not square: the stage crops), content latents under tmp/queue."""
    images = tmp_path / "data" / "00" / "images"
    images.mkdir(parents=True)
    _image(1, (160, 200)).save(images / "a.png")
    _image(2, (128, 128)).save(images / "b.png")
    (tmp_path / "queue").mkdir()
    for i in range(3):
        z = np.random.default_rng(10 + i).standard_normal((4, 16, 16)).astype(np.float32)
        np.save(tmp_path / "queue" / f"c{i}.npy", z)
    return tmp_path


def make_task(root: Path, i: int, out: str = "out", style: str = "00") -> Task:
    return Task(id=f"{style}-c{i}", style=style, prompt=f"prompt {i}", name=f"c{i}", seed=i,
                style_dir=root / "data" / "00", files={"content_png": root / "content" / f"c{i}.png",
                                                       "content_latent": root / "queue" / f"c{i}.npy",
                                                       "output_png": root / out / f"c{i}.png"})


def run(stage, root: Path, out="out", n=3, beats=None):
    tasks = [make_task(root, i, out) for i in range(n)]
    stage.run(tasks, (beats.append if beats is not None else lambda phase: None))
    return [t.files["output_png"].read_bytes() for t in tasks]


def pixels(data: bytes) -> np.ndarray:
    import io
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def test_each_task_gets_a_stylized_png_of_the_content_size(tiny_model_dir, dataset):
    outputs = run(make_stage(tiny_model_dir), dataset, n=2)
    images = [pixels(b) for b in outputs]
    assert all(im.shape == (128, 128, 3) and im.dtype == np.uint8 for im in images)
    assert not np.array_equal(images[0], images[1])
    assert not list((dataset / "out").glob(".*"))  # no temporary files left


def test_the_consumer_is_deterministic_and_a_cached_style_gives_the_same_bytes(tiny_model_dir, dataset):
    stage = make_stage(tiny_model_dir)
    first = run(stage, dataset, "first", n=2)
    cached = run(stage, dataset, "second", n=2)  # the style's inversion comes from the cache
    fresh = run(make_stage(tiny_model_dir, cached_styles=0), dataset, "third", n=2)  # recomputed
    assert first == cached == fresh
    assert (stage.cache.misses, stage.cache.hits) == (1, 1)


def test_the_style_is_inverted_once_and_beats_come_every_step(tiny_model_dir, dataset):
    beats = []
    run(make_stage(tiny_model_dir, batch=2), dataset, beats=beats)
    steps = [b for b in beats if "/" in b]
    assert len([b for b in steps if b.startswith("style inversion")]) == STEPS
    assert len([b for b in steps if b.startswith("content inversion")]) == 2 * STEPS  # two batches: 2 + 1
    assert len([b for b in steps if b.startswith("reversion")]) == 2 * STEPS


def test_batching_does_not_change_the_pixels(tiny_model_dir, dataset):
    together = [pixels(b).astype(int) for b in run(make_stage(tiny_model_dir, batch=3), dataset, "b3")]
    alone = [pixels(b).astype(int) for b in run(make_stage(tiny_model_dir, batch=1), dataset, "b1")]
    for a, b in zip(together, alone):
        assert np.abs(a - b).max() <= 1


def test_without_a_latent_the_content_png_is_encoded(tiny_model_dir, dataset):
    stage = make_stage(tiny_model_dir)
    (dataset / "content").mkdir()
    _image(3, (128, 128)).save(dataset / "content" / "c0.png")
    z = stage.sd.encode_images(np.asarray(Image.open(dataset / "content" / "c0.png"))[None])
    np.save(dataset / "queue" / "c0.npy", np.asarray(z.numpy() if hasattr(z, "numpy") else z)[0])
    with_latent = run(stage, dataset, "latent", n=1)
    (dataset / "queue" / "c0.npy").unlink()
    assert run(stage, dataset, "png", n=1) == with_latent


def test_the_configured_style_image_is_used_else_the_first_sorted(tiny_model_dir, dataset):
    default = run(make_stage(tiny_model_dir), dataset, "default", n=1)
    shutil.copy(dataset / "data" / "00" / "images" / "a.png", dataset / "data" / "00" / "images" / "z.png")
    assert run(make_stage(tiny_model_dir, style_image="z.png"), dataset, "z", n=1) == default
    assert run(make_stage(tiny_model_dir, style_image="b.png"), dataset, "b", n=1) != default


def test_a_missing_style_image_names_the_folder_and_the_fix(tiny_model_dir, dataset):
    with pytest.raises(FileNotFoundError, match=r"images/nope.png.*consumer.style_image"):
        run(make_stage(tiny_model_dir, style_image="nope.png"), dataset, n=1)
    for p in (dataset / "data" / "00" / "images").iterdir():
        p.unlink()
    with pytest.raises(FileNotFoundError, match=r"images: no style image"):
        run(make_stage(tiny_model_dir), dataset, n=1)


def test_tasks_of_two_styles_are_refused(tiny_model_dir, dataset):
    tasks = [make_task(dataset, 0), make_task(dataset, 1, style="01")]
    with pytest.raises(ValueError, match="one style"):
        make_stage(tiny_model_dir).run(tasks, lambda phase: None)


def test_restyle_writes_one_png_per_content_image_and_skips_existing(tiny_model_dir, dataset, capsys):
    import yaml
    from consumer.restyle import main
    config = dataset / "config.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(tiny_model_dir), "dtype": "float32"},
                                      "consumer": {"size": 128, "steps": STEPS},
                                      "queue": {"fsync": "none"}}))
    contents = dataset / "photos"
    contents.mkdir()
    _image(4, (150, 130)).save(contents / "p1.png")
    _image(5, (128, 128)).convert("RGB").save(contents / "p2.jpg")
    args = ["--config", str(config), "--style-dir", str(dataset / "data" / "00"), "--content-dir", str(contents),
            "--out", str(dataset / "restyled"), "--device", "cpu"]
    assert main(args) == 0
    assert sorted(p.name for p in (dataset / "restyled").iterdir()) == ["p1.png", "p2.png"]
    assert pixels((dataset / "restyled" / "p1.png").read_bytes()).shape == (128, 128, 3)
    assert main(args) == 0
    assert "already exists" in capsys.readouterr().out


def test_the_base_model_is_used_unless_use_lora_and_a_lora_left_by_another_stage_is_removed(tiny_model_dir, dataset):
    base = run(make_stage(tiny_model_dir), dataset, "base", n=1)
    lora_dir = {"lora.dir": str(tiny_model_dir / "loras")}
    from consumer.stage import ConsumerStage
    with_lora = ConsumerStage(load_config(None, dict(make_config_settings(tiny_model_dir), **lora_dir,
                                                     **{"consumer.use_lora": True})), "cpu")
    assert run(with_lora, dataset, "lora", n=1) != base  # the shared model now holds style 00's LoRA
    assert run(make_stage(tiny_model_dir), dataset, "base-again", n=1) == base


def test_use_lora_without_a_lora_follows_lora_missing(tiny_model_dir, dataset):
    from consumer.stage import ConsumerStage
    settings = dict(make_config_settings(tiny_model_dir), **{"consumer.use_lora": True,
                                                             "lora.dir": str(dataset / "no-loras")})
    strict = ConsumerStage(load_config(None, dict(settings, **{"lora.missing": "error"})), "cpu")
    with pytest.raises(FileNotFoundError, match="no LoRA for style 00"):
        run(strict, dataset, n=1)
    lenient = ConsumerStage(load_config(None, dict(settings, **{"lora.missing": "warn"})), "cpu")
    lenient.sd.set_lora(tiny_model_dir / "loras" / "style_01" / "pytorch_lora_weights.bin")  # another stage's
    with pytest.warns(UserWarning, match="no LoRA for style 00"):
        assert lenient.weights.apply("00", use_lora=True) is None
    assert lenient.sd._lora.active is None


def test_a_lora_of_nans_fails_the_tasks_naming_them_and_writes_nothing(tiny_model_dir, dataset):
    from consumer.stage import ConsumerStage
    from test_producer import nan_lora
    path = nan_lora(tiny_model_dir, dataset / "nan-loras")
    settings = dict(make_config_settings(tiny_model_dir), **{"consumer.use_lora": True,
                                                             "lora.dir": str(dataset / "nan-loras")})
    with pytest.raises(ValueError) as err:
        run(ConsumerStage(load_config(None, settings), "cpu"), dataset, n=2)
    message = str(err.value)
    assert "\n" not in message and "stylized latent has NaN/inf" in message and str(path) in message
    assert "style 00, prompt 'prompt 0'" in message and "style 00, prompt 'prompt 1'" in message
    assert not (dataset / "out").exists()
