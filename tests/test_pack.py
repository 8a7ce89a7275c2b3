"""One LoRA packed over many styles (`train.pack`, docs/training.md): one train job every style's
generation waits for, its images drawn round-robin across the styles with each style's own prompt, a
resumable run, and a record over every style's images (docs/queue.md §11). The plan and records run with
the stand-in stages; the trainer on the tiny model at 64 px, shapes as in test_train.py."""
import json
import time
import types

import numpy as np
import pytest
from PIL import Image

from common.config import ConfigError, load_config
from common.jobqueue.planner import plan
from common.pack import PACK_DIR
from common.style_files import lora_path
from producer.train_data import RoundRobinDraws
from producer.train_files import LORA_BIN
import launch
from common.devkit.fake_stage import FAKE_TRAIN_STEPS, fake_lora
from queue_fixtures import check_invariants, graph_of, kill_run, launch as run_launcher, wait_for, write_config
from test_train import write_config as write_train_config


def pack_config(tmp_path, **sections):
    return write_config(tmp_path, lora={"missing": "train", "dir": str(tmp_path / "style")},
                        train={"pack": True}, **sections)


def test_one_train_job_for_every_style_and_every_gen_job_waits_for_it(tmp_path):
    path = pack_config(tmp_path)
    config, graph, nodes, q = graph_of(path)
    train = [n for n in nodes if n.job.stage == "train"]
    gen = [n for n in nodes if n.job.stage == "gen"]
    assert len(train) == 1 and train[0].job.group == "pack" and len(gen) == 6
    assert all(n.needs == (train[0].job.key,) for n in gen)
    assert plan(q, nodes).queued == {"train": 1, "gen": 6, "sty": 0}
    result = run_launcher(path)
    assert result.returncode == 0, result.stderr
    check_invariants(path)
    packed = tmp_path / "style" / PACK_DIR / LORA_BIN
    _, graph, nodes, _ = graph_of(path)
    gen = [n for n in nodes if n.job.stage == "gen"]
    assert packed.is_file() and {lora_path(config, s) for s in ("00", "01")} == {packed}
    for style in ("00", "01"):  # every style's content images name the one LoRA
        task = graph.task(next(n.job for n in gen if n.job.group == style))
        assert task.files["lora_file"] == packed
        assert graph.output_states(graph.spec("gen"), task)[task.files["content_png"]] == "ok"


def test_a_changed_styles_images_retrain_the_pack_and_redo_every_styles_results(tmp_path):
    path = pack_config(tmp_path)
    assert run_launcher(path).returncode == 0
    _, graph, nodes, q = graph_of(path)
    assert current(graph, nodes, q) == {"train": [True], "gen": [True] * 6, "sty": [True] * 6}
    Image.new("RGB", (4, 4), (90, 20, 30)).save(tmp_path / "data" / "01" / "images" / "more.png")
    _, graph, nodes, q = graph_of(path)
    train = next(n.job for n in nodes if n.job.stage == "train")
    assert q.rules["train"].superseded(train)  # a LoRA of ours made from other images: both styles' results redone
    assert current(graph, nodes, q) == {"train": [False], "gen": [False] * 6, "sty": [False] * 6}
    result = run_launcher(path)
    assert result.returncode == 0, result.stderr
    assert "6 gen (lora changed)" in result.stderr and "1 train (images 01 changed)" in result.stderr, result.stderr
    _, graph, nodes, q = graph_of(path)
    assert current(graph, nodes, q) == {"train": [True], "gen": [True] * 6, "sty": [True] * 6}
    # (the stand-in's LoRA bytes do not depend on the images, so style 00's stylized results, whose style
    # image is unchanged, count again once the pack is retrained: the invariants' done records differ)


def test_a_launcher_killed_while_the_pack_trains_resumes_it_from_its_last_step(tmp_path):
    path = pack_config(tmp_path, producer={"batch": 1})
    queue = graph_of(path)[3]
    first = run_launcher(path, env={"JSTYLEID_FAKE_MS": "400-450"}, wait=False)

    def progress():
        steps = []
        for p in (queue.layout.scratch / "train").glob("*/progress.json"):
            try:
                steps.append(json.loads(p.read_text())["step"])
            except (OSError, ValueError):
                pass
        return steps
    wait_for(lambda: any(s >= 2 for s in progress()), timeout=30)
    assert launch.main(["status", "--config", str(path)]) == 0  # the pack's progress, while it runs
    kill_run(first, queue.layout.root)
    time.sleep(0.2)
    saved = max(progress())
    assert 2 <= saved < FAKE_TRAIN_STEPS and len(progress()) == 1  # one job's scratch folder
    before = set(queue.layout.logs.glob("*.log"))
    rerun = run_launcher(path)
    assert rerun.returncode == 0, rerun.stderr
    logs = "".join(p.read_text() for p in set(queue.layout.logs.glob("*.log")) - before)
    assert f"train style pack: resuming at step {saved}" in logs  # not from step 0
    check_invariants(path)
    packed = tmp_path / "style" / PACK_DIR / LORA_BIN
    assert packed.read_bytes() == fake_lora("pack", load_config(path).train_hash())


def current(graph, nodes, q) -> dict:
    """Per stage, whether each job's outputs are current; gen's by its content image (its latent, a
    hand-off, is gone once StyleID has read it)."""
    found = {}
    for node in nodes:
        if node.job.stage == "gen":
            task = graph.task(node.job)
            ok = graph.output_states(graph.spec("gen"), task)[task.files["content_png"]] == "ok"
        else:
            ok = q.rules[node.job.stage].done(node.job)
        found.setdefault(node.job.stage, []).append(ok)
    return found


def test_pack_is_off_by_default_and_leaves_the_pixel_hash(tmp_path):
    base = load_config()
    assert base.train.pack is False and base.pixel_hash() == "bd2355f1b1b6da3f"
    packed = load_config(overrides={"train.pack": True})
    assert packed.pixel_hash() == base.pixel_hash()
    assert load_config(overrides={"train.pack": False}).train_hash() == base.train_hash() != packed.train_hash()


@pytest.mark.parametrize("overrides, needle", [
    ({"train.prompt": "sks painting"}, "train.pack needs train.prompt to name each style's token with {style}"),
    ({"train.prior": {"prompt": "a painting"}}, "train.pack is not yet combined with train.prior"),
])
def test_pack_rejects_settings_it_cannot_honour(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("{", r"\{").replace("}", r"\}")):
        load_config(overrides={"train.pack": True, **overrides})


def test_round_robin_draws_take_styles_in_turn_each_in_its_own_epochs_and_resume_exactly():
    sizes, starts = [2, 3, 1], [0, 2, 5]
    draws = RoundRobinDraws(np.random.default_rng(0), sizes, (4, 2, 2), 1000)
    images = [draws.next().image for _ in range(18)]
    for k, image in enumerate(images):  # step k: an image of style k mod 3
        s = k % 3
        assert starts[s] <= image < starts[s] + sizes[s]
    for s in range(3):  # each epoch of a style covers its images once
        own = images[s::3]
        for e in range(0, len(own) - len(own) % sizes[s], sizes[s]):
            assert sorted(own[e:e + sizes[s]]) == list(range(starts[s], starts[s] + sizes[s]))
    again = RoundRobinDraws(np.random.default_rng(0), sizes, (4, 2, 2), 1000)
    for _ in range(7):
        again.next()
    resumed = RoundRobinDraws(np.random.default_rng(5), sizes, (4, 2, 2), 1000)
    resumed.restore(again.state())
    rest = [resumed.next() for _ in range(11)]
    assert [d.image for d in rest] == images[7:]
    reference = RoundRobinDraws(np.random.default_rng(0), sizes, (4, 2, 2), 1000)
    expected = [reference.next() for _ in range(18)][7:]
    assert all(np.array_equal(a.noise, b.noise) and a.timestep == b.timestep for a, b in zip(rest, expected))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two styles of 64 px images: 00 with two, 01 with one."""
    root = tmp_path_factory.mktemp("packdata")
    rng = np.random.default_rng(1)
    for style, n in (("00", 2), ("01", 1)):
        (root / style / "images").mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / style / "images" / f"{i}.png")
    return root


class Killed(Exception):
    pass


def test_pack_training_gives_each_style_its_token_and_resumes_after_a_kill(tiny_model_dir, dataset, tmp_path,
                                                                            monkeypatch, capsys):
    from producer.train_loop import LoraTrainer
    from producer.train_stage import TrainStage
    seen = []
    set_data = LoraTrainer.set_data
    monkeypatch.setattr(LoraTrainer, "set_data", lambda self, images, prompts, *a: (
        seen.append(list(prompts)), set_data(self, images, prompts, *a))[1])
    config = load_config(write_train_config(tmp_path, tiny_model_dir, steps=3, checkpoint_every=2, pack=True))
    stage = TrainStage(config, "cpu")

    def task(out):
        return types.SimpleNamespace(style="pack", style_dir=dataset / "pack", made_by=None,
                                     files={"lora_file": out / PACK_DIR / LORA_BIN}, scratch_dir=out / "scratch")
    whole = task(tmp_path / "whole")
    stage.run([whole], lambda phase: None)
    assert seen[-1] == ["style_00", "style_00", "style_01"]  # each style's images with its own token

    def kill_at_step_3(phase):
        if phase == "train 3/3":
            raise Killed()
    cut = task(tmp_path / "cut")
    with pytest.raises(Killed):
        stage.run([cut], kill_at_step_3)
    assert not cut.files["lora_file"].exists()
    capsys.readouterr()
    stage.run([cut], lambda phase: None)
    assert "train pack: resuming from step 2" in capsys.readouterr().out
    a, b = (read(t.files["lora_file"]) for t in (whole, cut))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def read(path):
    from common.sd.weights import read_weights
    return read_weights(path)
