"""Results know what made them (docs/queue.md §11): a rerun under other settings or inputs never counts a
result made otherwise. Each test ends with every result byte for byte what a clean run writes (pixels and
record), with the stand-in stages (common/devkit/fake_stage.py)."""
import multiprocessing as mp
import os
import shutil
import signal

import numpy as np
import pytest
import yaml
from PIL import Image

import launch
from common.devkit.fake_stage import fake_content, fake_latent, fake_lora, fake_output
from common.jobqueue import crash
from common.jobqueue.planner import plan
from common.provenance import kept_path, lora_made_by, parse, png_bytes, png_made_by
from common.identity import Identities
from common.config import load_config
from queue_fixtures import (check_invariants, graph_of, kill_run, launch as run_launcher, wait_for,
                            write_config)

pytestmark = pytest.mark.timeout(120)
CTX = mp.get_context("fork")
SEED1 = {"producer": {"batch": 2, "seed": 1}}


def results(out) -> dict:
    """{relative path: bytes} of every PNG under an output folder (results and content images)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def variant(config_path, name: str, **changes):
    """The same config with other values (sections merged) written as NAME.yaml beside it."""
    data = yaml.safe_load(config_path.read_text())
    for key, value in changes.items():
        data[key] = dict(data.get(key) or {}, **value) if isinstance(value, dict) else value
    path = config_path.with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def clean_run(config_path) -> dict:
    """What a clean run of this config writes: the same settings and inputs, a new output and queue folder."""
    root = config_path.parent
    clean = variant(config_path, f"clean-{len(list(root.glob('clean-*.yaml')))}", output=str(root / "clean-out"),
                    queue_dir=str(root / "clean-q"))
    for folder in (root / "clean-out", root / "clean-q"):
        shutil.rmtree(folder, ignore_errors=True)
    done = run_launcher(clean)
    assert done.returncode == 0, done.stderr
    return results(root / "clean-out")


def finished(config_path, *args):
    done = run_launcher(config_path, *args)
    assert done.returncode == 0, done.stderr
    return done.stderr


def same_as_clean(config_path):
    check_invariants(config_path)
    out = load_config(config_path).output
    assert results(__import__("pathlib").Path(out)) == clean_run(config_path)


def test_a_finished_seed_0_run_then_seed_1_with_fresh_equals_a_clean_seed_1_run(tmp_path):
    old = write_config(tmp_path)
    finished(old)
    new = write_config(tmp_path, **SEED1)
    assert run_launcher(new).returncode == 2  # refused without --fresh
    err = finished(new, "--fresh")
    assert "6 result(s) superseded" in err and "sty (settings)" in err, err
    same_as_clean(new)


def _launch(config_path, spec, args):
    crash.arm(spec)
    os._exit(launch.main(["--config", str(config_path), "--gpus", "cpu", *args]))


@pytest.mark.parametrize("kill", ["after_manifest:1", "plan_step:3", "mid_run"])
def test_a_killed_seed_0_run_then_seed_1_with_fresh_equals_a_clean_seed_1_run(tmp_path, kill):
    old = write_config(tmp_path)
    if kill == "mid_run":  # the launcher and its worker SIGKILLed once some results are in place
        first = run_launcher(old, env={"JSTYLEID_FAKE_MS": "40"}, wait=False)
        wait_for(lambda: len(list((tmp_path / "out").glob("*/*.png"))) >= 2, timeout=60)
        kill_run(first, tmp_path / "q")
    else:  # the launcher SIGKILLed while planning
        child = CTX.Process(target=_launch, args=(old, kill, ()))
        child.start()
        child.join(30)
        assert child.exitcode == -signal.SIGKILL
    new = write_config(tmp_path, **SEED1)
    finished(new, "--fresh")
    same_as_clean(new)


def with_loras(tmp_path, missing="warn", **sections):
    """A config whose styles have LoRA files of the user's."""
    for style in ("00", "01"):
        folder = tmp_path / "loras" / f"style_{style}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "pytorch_lora_weights.bin").write_bytes(f"the user's LoRA of {style}".encode())
    return write_config(tmp_path, lora={"dir": str(tmp_path / "loras"), "missing": missing}, **sections)


def inodes(out, style) -> dict:
    return {p.name: p.stat().st_ino for p in (out / style).rglob("*.png")}


def test_a_lora_file_replaced_between_runs_redoes_that_styles_results_only(tmp_path):
    path = with_loras(tmp_path)
    finished(path)
    out = tmp_path / "out"
    untouched = inodes(out, "01")
    (tmp_path / "loras" / "style_00" / "pytorch_lora_weights.bin").write_bytes(b"a new LoRA for 00")
    err = finished(path)
    assert "3 result(s) superseded" in err and "3 gen (lora changed), 3 sty (lora changed)" in err, err
    assert inodes(out, "01") == untouched
    same_as_clean(path)


def test_one_style_image_replaced_redoes_that_styles_stylized_results_only(tmp_path):
    path = write_config(tmp_path)
    finished(path)
    out = tmp_path / "out"
    untouched, contents = inodes(out, "01"), {p.name: p.stat().st_ino for p in (out / "00" / "content").glob("*")}
    Image.new("RGB", (4, 4), (200, 0, 0)).save(tmp_path / "data" / "00" / "images" / "ref.png")
    err = finished(path)
    assert "3 result(s) superseded" in err and "3 sty (style image changed)" in err and "gen (" not in err, err
    assert inodes(out, "01") == untouched  # the other style's results, and this style's content images
    assert {p.name: p.stat().st_ino for p in (out / "00" / "content").glob("*")} == contents
    same_as_clean(path)


def test_a_changed_training_recipe_retrains_that_lora_and_redoes_its_images_only(tmp_path):
    path = with_loras(tmp_path, "train", train={"rank": 4})
    lora = tmp_path / "loras" / "style_01" / "pytorch_lora_weights.bin"
    lora.unlink()  # style 01 is trained here; style 00 keeps the user's LoRA
    finished(path)
    rank4 = lora.read_bytes()
    assert rank4 == fake_lora("01", load_config(path).train_hash())
    out, user_lora = tmp_path / "out", (tmp_path / "loras" / "style_00" / "pytorch_lora_weights.bin").read_bytes()
    untouched = inodes(out, "00")

    rank8 = variant(path, "rank8", train={"rank": 8})
    err = finished(rank8)
    assert "3 result(s) superseded" in err and "1 train (settings)" in err, err
    assert lora.read_bytes() == fake_lora("01", load_config(rank8).train_hash()) != rank4
    assert (tmp_path / "loras" / "style_00" / "pytorch_lora_weights.bin").read_bytes() == user_lora
    assert inodes(out, "00") == untouched
    expect_made_by(rank8, Identities().of(lora))
    old_record = lora_made_by(lora, Identities().of(lora))
    assert parse(old_record)["plan"] == load_config(rank8).train_hash()

    err = finished(path)  # back to rank 4: the kept LoRA is put back, nothing trained
    assert lora.read_bytes() == rank4 and "1 to train" in err
    assert kept_path(lora, old_record).read_bytes() == fake_lora("01", load_config(rank8).train_hash())
    log = "".join(p.read_text() for p in (tmp_path / "q" / "logs").glob("*.log"))
    assert "restored" in log and "train 1/" not in log.split("restored")[-1]
    expect_made_by(path, Identities().of(lora))


def expect_made_by(config_path, lora_identity):
    """Every result holds the pixels of its task and the record this config writes, naming this LoRA."""
    config, graph, nodes, _ = graph_of(config_path)
    for node in nodes:
        if node.job.stage == "train":
            continue
        task = graph.task(node.job)
        latent = fake_latent(task.id)
        pixels, path = ((fake_content(latent), task.files["content_png"]) if node.job.stage == "gen" else
                        (fake_output(latent, task.style), task.files["output_png"]))
        assert path.read_bytes() == png_bytes(pixels, task.made_by), path
        if task.style == "01":
            assert parse(task.made_by)["inputs"]["lora"] == lora_identity


def test_a_result_without_provenance_counts_only_with_trust_existing(tmp_path):
    path = write_config(tmp_path)
    finished(path)
    theirs = tmp_path / "out" / "01" / "Tree.png"
    Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(theirs)  # another tool's image, no record
    mine = theirs.read_bytes()
    err = finished(path, "--trust-existing")
    assert "6 finished" in err and theirs.read_bytes() == mine, err
    err = finished(path)
    assert "1 result(s) superseded" in err and "1 sty (no provenance)" in err and "--trust-existing" in err, err
    assert png_made_by(theirs) is not None
    same_as_clean(path)


def _work(config_path, spec):
    from common.workers.worker import Worker
    os.environ["JSTYLEID_FAKE_MS"] = "0"
    crash.arm(spec)
    os._exit(Worker(load_config(config_path), "cpu", "both", 1).run())


@pytest.mark.parametrize("spec", ["replace_result:1", "replace_result:4", "mid_output:3", "after_output:5"])
def test_a_kill_inside_the_replace_step_never_leaves_a_result_missing_or_a_stale_one_counted(tmp_path, spec):
    old = write_config(tmp_path)
    finished(old)
    new = write_config(tmp_path, **SEED1)
    shutil.rmtree(tmp_path / "q")
    config, graph, nodes, queue = graph_of(new)
    queue.layout.make()
    launch.write_manifest(queue, graph.plan)
    with graph.planning():
        plan(queue, nodes)
    worker = CTX.Process(target=_work, args=(new, spec))
    worker.start()
    worker.join(30)
    assert worker.exitcode == -signal.SIGKILL, f"{spec} was never reached"
    for node in nodes:  # every result and content image in place and whole: the old one or the new one
        task = graph.task(node.job)
        for png in (task.files[k] for k in ("content_png", "output_png") if k in task.files):
            assert png_made_by(png) is not None, png
    _, graph, nodes, queue = graph_of(new)
    with graph.planning():
        counted = [n for n in nodes if queue.rules[n.job.stage].done(n.job)]
    for node in counted:  # counted means made by this run's record
        task = graph.task(node.job)
        out = task.files["content_png"] if node.job.stage == "gen" else task.files["output_png"]
        assert png_made_by(out) == task.made_by
    err = finished(new)
    same_as_clean(new)


def test_a_styles_results_have_one_provenance_value_that_any_changed_result_changes(tmp_path):
    path = write_config(tmp_path)
    config, graph, nodes, _ = graph_of(path)
    tasks = [graph.task(n.job) for n in nodes if n.job.stage == "sty" and n.job.group == "00"]
    before = graph.results_made_by(tasks)
    assert graph.results_made_by(list(reversed(tasks))) == before
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "data" / "00" / "images" / "ref.png")
    _, graph, nodes, _ = graph_of(path)
    assert graph.results_made_by([graph.task(n.job) for n in nodes
                                  if n.job.stage == "sty" and n.job.group == "00"]) != before
