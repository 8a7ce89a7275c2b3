"""Training as the pipeline's first stage, with the stand-in stages: a style without a LoRA is trained
first and its generation waits for it; an existing LoRA is used and never overwritten; a launcher killed
during training resumes the job from its last step; status and the progress bar count training steps."""
import json
import time

import launch
from common.config import load_config
from common.devkit.fake_stage import FAKE_TRAIN_STEPS, fake_lora
from common.jobqueue.job import read_job
from common.jobqueue.manifest import write_manifest
from common.jobqueue.planner import plan
from queue_fixtures import check_invariants, graph_of, kill_run, launch as run_launcher, wait_for, write_config

def lora_of(tmp_path, style):
    return tmp_path / "style" / f"style_{style}" / "pytorch_lora_weights.bin"


def train_config(tmp_path, **sections):
    return write_config(tmp_path, lora={"missing": "train", "dir": str(tmp_path / "style")}, **sections)


def test_styles_without_a_lora_are_trained_first_and_their_generation_waits(tmp_path):
    path = train_config(tmp_path)
    config, graph, nodes, q = graph_of(path)
    assert graph.stages == ("train", "gen", "sty")
    report = plan(q, nodes)
    assert report.queued == {"train": 2, "gen": 6, "sty": 0}
    assert len(q.scan("gen")["blocked"]) == 6 and len(q.scan("train")["pending"]) == 2
    result = run_launcher(path)
    assert result.returncode == 0, result.stderr
    check_invariants(path)
    for style in ("00", "01"):
        assert lora_of(tmp_path, style).read_bytes() == fake_lora(style, config.train_hash())
    assert all(not read_job(p).errors for p in q.scan("gen")["done"].values())  # none ran before its LoRA
    assert not list((q.layout.scratch / "train").glob("*"))  # checkpoints go once the LoRA lands


def test_an_existing_lora_is_used_and_never_overwritten(tmp_path):
    mine = lora_of(tmp_path, "00")
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own LoRA")
    path = train_config(tmp_path)
    config, graph, nodes, q = graph_of(path)
    report = plan(q, nodes)
    assert report.queued["train"] == 1 and len(q.scan("gen")["pending"]) == 3  # style 00 starts at once
    assert run_launcher(path).returncode == 0
    assert mine.read_bytes() == b"the user's own LoRA" and lora_of(tmp_path, "01").read_bytes() == fake_lora("01", load_config(path).train_hash())
    check_invariants(path)


def test_a_launcher_killed_during_training_resumes_from_the_last_step(tmp_path):
    path = train_config(tmp_path, producer={"batch": 1})
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
    assert launch.main(["status", "--config", str(path)]) == 0  # training progress per style, while it runs
    kill_run(first, queue.layout.root)
    time.sleep(0.2)
    saved = max(progress())
    assert 2 <= saved < FAKE_TRAIN_STEPS
    before = set(queue.layout.logs.glob("*.log"))
    rerun = run_launcher(path)
    assert rerun.returncode == 0, rerun.stderr
    logs = "".join(p.read_text() for p in set(queue.layout.logs.glob("*.log")) - before)
    assert f"resuming at step {saved}" in logs  # not from step 0
    check_invariants(path)
    assert lora_of(tmp_path, "00").read_bytes() == fake_lora("00", load_config(path).train_hash())


def test_status_and_the_progress_bar_count_training_steps(tmp_path, capsys):
    path = train_config(tmp_path)
    config, graph, nodes, q = graph_of(path)
    write_manifest(q, graph.plan)
    plan(q, nodes)
    job = read_job(next(iter(q.scan("train")["pending"].values())))
    scratch = graph.task(job).scratch_dir
    scratch.mkdir(parents=True)
    (scratch / "progress.json").write_text(json.dumps({"step": 3, "steps": FAKE_TRAIN_STEPS, "loss": 0.25}))
    assert launch.main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"  {job.group}: step 3/{FAKE_TRAIN_STEPS}, loss 0.25 (pending)" in out
    progress = launch.Progress(q, graph, {"train": 2, "gen": 6, "sty": 6})
    assert progress.bars["train"].total == 2 * FAKE_TRAIN_STEPS and progress.count("train") == 3
    progress.close()
