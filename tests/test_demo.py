"""The CPU demo: its inputs are complete and idempotent, its contact sheets, and the whole run surviving a kill."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common.atomic import png_is_complete, write_png
from common.config import load_config
from common.devkit.demo import PROMPTS, dots, make_contact_sheets, prepare_demo, stripes
from common.naming import prompt_names
from queue_fixtures import kill_run

ROOT = Path(__file__).resolve().parent.parent


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def test_prepare_demo_writes_a_valid_config_and_dataset_once_and_leaves_the_loras_to_training(tmp_path):
    path = prepare_demo(tmp_path)
    config = load_config(path)
    for style, prompts in PROMPTS.items():
        folder = Path(config.dataset) / style
        assert list(json.loads((folder / "prompt.json").read_text()).values()) == prompts
        assert all(png_is_complete(p) for p in (folder / "images").glob("*.png"))
        assert not any((Path(config.lora.dir) / f"style_{style}").glob("pytorch_lora_weights.*"))
    assert config.lora.missing == "train" and config.train.steps >= 10
    assert (Path(config.model.path) / "model_index.json").is_file()
    assert config.producer.size == 128 and config.model.dtype == "float32"
    before = snapshot(tmp_path)
    assert prepare_demo(tmp_path) == path
    assert snapshot(tmp_path) == before


def test_the_two_drawn_styles_are_clearly_different():
    a, b = stripes(0).astype(float), dots(100).astype(float)
    assert np.abs(a.mean((0, 1)) - b.mean((0, 1))).max() > 20 or abs(a.std() - b.std()) > 20
    assert not np.array_equal(stripes(0), stripes(1))


def fake_outputs(config, missing=()):
    """Content and result PNGs where the planner puts them, except the names in `missing`."""
    out = Path(config.output)
    for style in PROMPTS:
        source = Path(config.dataset) / style / "prompt.json"
        for name in prompt_names(json.loads(source.read_text()), str(source)).values():
            if name not in missing:
                write_png(out / style / "content" / f"{name}.png", np.full((128, 128, 3), 40, np.uint8), fsync=False)
                write_png(out / style / f"{name}.png", np.full((128, 128, 3), 200, np.uint8), fsync=False)


def test_contact_sheets_show_style_content_and_result_per_prompt(tmp_path):
    config = load_config(prepare_demo(tmp_path))
    fake_outputs(config, missing=("Cat",))
    sheets = make_contact_sheets(config)
    assert sheets == [Path(config.output) / s / "contact_sheet.png" for s in sorted(PROMPTS)]
    for sheet in sheets:
        assert png_is_complete(sheet)
        with Image.open(sheet) as im:
            pixels = np.asarray(im.convert("RGB"))
        width_per_column = pixels.shape[1] / (len(PROMPTS["00"]) + 1)
        assert width_per_column >= 128 and pixels.shape[0] >= 2 * 128
        # a content tile (40) and a result tile (200) are pasted in
        assert (pixels == 40).all(-1).sum() >= 100 * 100 and (pixels == 200).all(-1).sum() >= 100 * 100


def wait_until(condition, first, log: Path, what: str, timeout=600):
    deadline = time.monotonic() + timeout
    while not condition():
        assert first.poll() is None, f"the demo exited before {what}:\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.2)


def trained_steps(queue_dir: Path) -> list:
    steps = []
    for p in (queue_dir / "scratch" / "train").glob("*/progress.json"):
        try:
            steps.append(json.loads(p.read_text())["step"])
        except (OSError, ValueError, KeyError):
            pass
    return steps


def test_the_demo_killed_during_training_and_after_the_first_image_completes_every_output(tmp_path):
    """train -> gen -> sty end to end: SIGKILL the launcher and its worker past the first training
    checkpoint, rerun and kill again after the first content image, rerun: every output is whole, and the
    killed training resumed from its checkpoint, not from step 0."""
    cmd = [sys.executable, "launch.py", "--demo", "--workdir", str(tmp_path)]
    queue_dir = tmp_path / "queue_dir"
    log = tmp_path / "run.log"
    with open(log, "wb") as sink:
        first = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    config = load_config(prepare_demo(tmp_path))
    every = config.train.checkpoint_every
    wait_until(lambda: any(s > every for s in trained_steps(queue_dir)), first, log, "a checkpoint was made")
    kill_run(first, queue_dir)
    assert not list((tmp_path / "output").glob("*/content/*.png"))
    with open(log, "ab") as sink:
        second = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    wait_until(lambda: list((tmp_path / "output").glob("*/content/*.png")), second, log, "a content image")
    kill_run(second, queue_dir)
    logs = "".join(p.read_text() for p in (queue_dir / "logs").glob("*.log"))
    assert f"resuming from step {every}" in logs
    assert not (tmp_path / "output" / "00" / "contact_sheet.png").exists()

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    out = Path(config.output)
    for style in PROMPTS:
        source = Path(config.dataset) / style / "prompt.json"
        for name in prompt_names(json.loads(source.read_text()), str(source)).values():
            assert png_is_complete(out / style / "content" / f"{name}.png"), (style, name)
            assert png_is_complete(out / style / f"{name}.png"), (style, name)
        sheet = out / style / "contact_sheet.png"
        assert png_is_complete(sheet) and str(sheet) in rerun.stdout
        lora = Path(config.lora.dir) / f"style_{style}"
        assert (lora / "pytorch_lora_weights.bin").is_file() and png_is_complete(lora / "loss_curve.png")
    assert not list(out.rglob(".*.tmp")), "a temporary file was left behind"
    assert not list((queue_dir / "scratch" / "train").glob("*/*")), "a training checkpoint was left behind"


def test_the_demo_with_the_strong_recipe_runs_train_gen_sty_to_every_output(tmp_path):
    """configs/recipes/strong.yaml's train: section (a few steps) on the demo's data, a caption beside one
    image, sty applying the LoRA too: every output lands, and each LoRA carries text-encoder and conv keys
    that the gen and sty stages merged (their launch checks parsed them)."""
    import yaml
    from common.sd.weights import read_weights
    settings = yaml.safe_load(Path(prepare_demo(tmp_path)).read_text())
    strong = yaml.safe_load((ROOT / "configs" / "recipes" / "strong.yaml").read_text())["train"]
    settings["train"] = {**strong, "steps": 4, "checkpoint_every": 2, "log_every": 2, "rank": 4,
                         "text_encoder": {"rank": 4}}
    settings["consumer"]["use_lora"] = True
    path = tmp_path / "strong.yaml"
    path.write_text(yaml.safe_dump(settings))
    (Path(settings["dataset"]) / "00" / "images" / "00.txt").write_text("red stripes", encoding="utf-8")
    run = subprocess.run([sys.executable, "launch.py", "--config", str(path), "--gpus", "cpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    config = load_config(path)
    for style in PROMPTS:
        source = Path(config.dataset) / style / "prompt.json"
        for name in prompt_names(json.loads(source.read_text()), str(source)).values():
            assert png_is_complete(Path(config.output) / style / f"{name}.png"), (style, name)
        keys = read_weights(Path(config.lora.dir) / f"style_{style}" / "pytorch_lora_weights.bin")
        assert any(k.startswith("text_encoder.") for k in keys) and any(".conv1.lora_A" in k for k in keys)
    logs = "".join(p.read_text() for p in (Path(config.queue_dir) / "logs").glob("*.log"))
    assert "2 captioned prompts" in logs
