"""Nothing mixed (docs/queue.md §4, §9): a launcher killed at any step of planning or of --fresh leaves a
queue that refuses other pixel settings, and after --fresh only the new settings' results are made; a
changed `output` is followed by the jobs already queued."""
import multiprocessing as mp
import os
import signal

import numpy as np
import pytest
from PIL import Image

import launch
from common.devkit.fake_stage import FakeGen, fake_latent, fake_output
from common.jobqueue import crash
from common.jobqueue.planner import plan
from queue_fixtures import check_invariants, graph_of, tasks_of, write_config

pytestmark = pytest.mark.timeout(90)
CTX = mp.get_context("fork")
PLANNING = ["after_manifest:1", "plan_step:1", "plan_step:4"]  # 6 gen jobs are planned: first, middle
FRESH = ["fresh_step:1", "fresh_step:3"]  # --fresh removes tmp, workers, logs, ..., the stage folders


def _launch(config_path, spec, args):
    crash.arm(spec)
    os._exit(launch.main(["--config", str(config_path), "--gpus", "cpu", *args]))


def killed_at(config_path, spec, *args):
    """Run the launcher in a forked child that SIGKILLs itself at crash point `spec`."""
    child = CTX.Process(target=_launch, args=(config_path, spec, args))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL, f"{spec} was never reached (exit {child.exitcode})"


def refused_with_other_settings(capsys, config_path):
    code = launch.main(["--config", str(config_path), "--gpus", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "other pixel settings" in err and "--fresh" in err, err


def only_new_seed_outputs(config_path):
    """check_invariants compares each result's bytes with those of its job id, which holds the seed."""
    config, tasks = check_invariants(config_path)
    assert config.producer.seed == 1 and len(tasks) == 6


@pytest.mark.parametrize("spec", PLANNING)
def test_a_plan_killed_at_any_step_refuses_other_settings(tmp_path, capsys, spec):
    old = write_config(tmp_path)
    killed_at(old, spec)
    queue = graph_of(old)[3]
    assert queue.layout.manifest.exists()
    new = write_config(tmp_path, producer={"batch": 2, "seed": 1})
    refused_with_other_settings(capsys, new)
    assert len(queue.scan("gen")["pending"]) < 6  # what the killed plan queued, nothing more


@pytest.mark.parametrize("spec", FRESH)
def test_fresh_killed_at_any_step_still_refuses_until_fresh_completes(tmp_path, capsys, spec):
    old = write_config(tmp_path)
    config, graph, nodes, queue = graph_of(old)
    queue.layout.make()
    launch.write_manifest(queue, graph.plan)
    plan(queue, nodes)
    new = write_config(tmp_path, producer={"batch": 2, "seed": 1})
    killed_at(new, spec, "--fresh")
    assert queue.layout.manifest.exists()
    refused_with_other_settings(capsys, new)


def test_after_an_interrupted_plan_and_fresh_only_the_new_settings_results_are_made(tmp_path, capsys):
    old = write_config(tmp_path)
    killed_at(old, "plan_step:3")
    new = write_config(tmp_path, producer={"batch": 2, "seed": 1})
    killed_at(new, "fresh_step:2", "--fresh")
    refused_with_other_settings(capsys, new)
    assert launch.main(["--config", str(new), "--gpus", "cpu", "--fresh"]) == 0, capsys.readouterr().err
    only_new_seed_outputs(new)


def test_a_changed_output_folder_is_followed_by_the_jobs_already_queued(tmp_path, capsys):
    first = write_config(tmp_path)
    config, graph, nodes, queue = graph_of(first)
    queue.layout.make()
    launch.write_manifest(queue, graph.plan)
    plan(queue, nodes)
    (job,) = queue.claimer("gen", "host-gcpu-1").claim(1)  # one task half done under the first output
    FakeGen(config, "cpu").run([graph.task(job)], lambda phase: None)
    queue.complete("host-gcpu-1", job)
    assert len(queue.scan("sty")["pending"]) == 1
    old_results = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*.png"))
    moved = write_config(tmp_path, output=str(tmp_path / "elsewhere"))
    assert launch.main(["--config", str(moved), "--gpus", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "6 result(s): 0 finished, 0 failed; jobs: 1 to generate, 0 to style queued now, 5 already queued" \
        in err, err  # nothing lost
    assert "6 image(s)" in err, err
    check_invariants(moved)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*.png")) == old_results
    for t in tasks_of(moved)[1]:
        assert t.files["output_png"].parent.parent == tmp_path / "elsewhere"
        assert np.array_equal(np.asarray(Image.open(t.files["output_png"])), fake_output(fake_latent(t.id), t.style))
