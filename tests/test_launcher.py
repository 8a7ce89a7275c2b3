"""The launcher end to end with the fake stages (subprocesses, CPU): completion and resume, poison jobs,
a second launcher, launcher SIGKILL, Ctrl-C, hung workers, corrupt state at startup, config errors."""
import json
import signal

import numpy as np
import pytest

import launch
from common.atomic import write_png
from common.config import load_config
from common.jobqueue import lease
from common.jobqueue.job import read_job
from common.jobqueue.planner import plan
from queue_fixtures import check_invariants, graph_of, launch as run_launcher, tasks_of, wait_for, write_config

pytestmark = pytest.mark.timeout(60)


def test_run_completes_and_a_rerun_does_nothing(tmp_path):
    path = write_config(tmp_path)
    first = run_launcher(path)
    assert first.returncode == 0, first.stderr
    check_invariants(path)
    assert "6 image(s)" in first.stderr and "images/hour" in first.stderr and "busy" in first.stderr
    logs = list((tmp_path / "q" / "logs").glob("*.log"))
    assert logs and "no job left" in logs[0].read_text()
    again = run_launcher(path)
    assert again.returncode == 0 and "6 finished, 0 failed; jobs: 0 to generate" in again.stderr


def test_a_deleted_output_is_rebuilt_by_one_rerun(tmp_path):
    path = write_config(tmp_path)
    assert run_launcher(path).returncode == 0
    config, tasks = tasks_of(path)
    lost = tasks[0]
    lost.files["output_png"].unlink()
    lost.files["content_png"].unlink()
    again = run_launcher(path)
    assert again.returncode == 0, again.stderr
    assert "5 finished, 0 failed; jobs: 1 to generate" in again.stderr
    check_invariants(path)


def test_a_worker_without_a_usable_device_exits_3_and_its_slot_is_parked(tmp_path):
    path = write_config(tmp_path, stages={"graph": "common.devkit.fake_stage:no_device_graph"})
    result = run_launcher(path)
    assert result.returncode == 3, result.stderr
    assert "parked: device unusable (exit 3)" in result.stderr
    assert "its log ends: " in result.stderr and "error: no usable device for cpu" in result.stderr  # not just "see log"
    logs = "".join(p.read_text() for p in (tmp_path / "q" / "logs").glob("*.log"))
    assert "error: no usable device for cpu" in logs


def test_status_prints_counts_and_throughput(tmp_path, capsys):
    path = write_config(tmp_path)
    assert run_launcher(path).returncode == 0
    assert launch.main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sty" in out and "throughput" in out and "ETA" in out
    header = out.splitlines()[0].split()
    sty_row = next(line for line in out.splitlines() if line.startswith("sty"))
    assert sty_row.split()[header.index("done")] == "6"


def test_poison_job_is_dead_lettered_and_the_rest_finish(tmp_path):
    path = write_config(tmp_path)
    result = run_launcher(path, env={"JSTYLEID_POISON": "Lighthouse"})
    assert result.returncode == 1, result.stderr
    config, tasks = check_invariants(path, expect_failed=("Lighthouse",))
    poison = next(t for t in tasks if t.prompt == "Lighthouse")
    record = read_job(graph_of(path)[3].layout.failed_path("gen", poison.id))
    assert record.attempts == 3 and "SIGABRT" in record.errors[-1]["text"]
    assert "1 job(s) failed" in result.stderr and "'Lighthouse'" in result.stderr
    assert f"python launch.py --config {path} --gpus cpu --retry-failed" in result.stderr  # what to type


def _running_launcher(tmp_path, fake_ms="200-250"):
    path = write_config(tmp_path, producer={"batch": 1}, consumer={"batch": 1})
    proc = run_launcher(path, env={"JSTYLEID_FAKE_MS": fake_ms}, wait=False)
    queue = graph_of(path)[3]
    wait_for(lambda: queue.count_done("gen") >= 1)
    return path, proc, queue


def test_second_launcher_refuses_naming_the_pid_then_resumes_after_a_launcher_sigkill(tmp_path):
    path, first, queue = _running_launcher(tmp_path)
    second = run_launcher(path)
    assert second.returncode == 75
    assert f"in use by pid {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    workers = [lease.read(p) for p in queue.layout.workers.glob("*.json")]
    first.kill()
    first.wait()
    wait_for(lambda: not any(lease.alive(w) for w in workers if w), timeout=2.0)  # PR_SET_PDEATHSIG
    third = run_launcher(path)
    assert third.returncode == 0, third.stderr
    check_invariants(path)


def test_ctrl_c_releases_jobs_and_the_next_run_resumes(tmp_path):
    path, proc, queue = _running_launcher(tmp_path)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 130
    scans = [queue.scan(s) for s in ("gen", "sty")]
    assert not any(s["claimed"] for s in scans)
    assert all(read_job(p).attempts == 0 for s in scans for p in s["pending"].values())
    assert queue.count_done("sty") < 6
    resumed = run_launcher(path)
    assert resumed.returncode == 0, resumed.stderr
    check_invariants(path)


def test_hung_worker_is_killed_and_its_job_retried(tmp_path):
    path = write_config(tmp_path, queue={"ttl_loading_s": 3.0})  # a stage's first batch runs under this TTL
    marker = tmp_path / "hung-once"
    result = run_launcher(path, env={"JSTYLEID_HANG": f"Tree:{marker}"})
    assert result.returncode == 0, result.stderr
    assert marker.exists() and "hung: no lease renewal" in result.stderr
    check_invariants(path)


def test_corrupt_jobs_truncated_outputs_and_stray_temp_files_are_repaired_at_startup(tmp_path):
    path = write_config(tmp_path)
    config, tasks = tasks_of(path)
    _, graph, nodes, q = graph_of(path)
    plan(q, nodes)
    pending = sorted(q.scan("gen")["pending"].values())
    pending[0].write_text("{garbage")
    pending[1].write_bytes(b"")
    pending[2].write_text(json.dumps({"v": 2, "id": pending[2].stem}))
    write_png(tasks[3].files["output_png"], np.zeros((8, 8, 3), np.uint8), fsync=False)
    tasks[3].files["output_png"].write_bytes(tasks[3].files["output_png"].read_bytes()[:30])
    tasks[4].files["output_png"].write_bytes(b"")
    stray = tasks[5].files["output_png"].parent / f".{tasks[5].files['output_png'].name}.abc123.tmp"
    stray.write_bytes(b"half")
    (q.layout.tmp / "x.1.2.json").write_text("{")
    result = run_launcher(path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("corrupt job file quarantined") == 3
    assert "truncated output" in result.stderr and "stray temp file" in result.stderr
    assert "partial queue write" in result.stderr
    check_invariants(path)


def test_changed_pixel_settings_refuse_unless_fresh(tmp_path):
    path = write_config(tmp_path)
    assert run_launcher(path).returncode == 0
    changed = write_config(tmp_path, producer={"batch": 2, "steps": 7})
    refused = run_launcher(changed)
    assert refused.returncode == 2 and "--fresh" in refused.stderr
    fresh = run_launcher(changed, "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert "outputs are kept until replaced" in fresh.stderr and "0 finished" in fresh.stderr, fresh.stderr
    assert "6 result(s) superseded" in fresh.stderr and "6 sty (settings)" in fresh.stderr  # made again
    assert "6 image(s)" in fresh.stderr
    check_invariants(changed)


@pytest.mark.parametrize("yaml_text, key", [
    ("queue:\n  bogus: 1\n", "bogus"),
    ("queue:\n  max_attempts: three\n", "queue.max_attempts"),
    ("queue: [1, 2\n", "not valid YAML"),
    ("dataset: /nonexistent/styles\n", "dataset"),
])
def test_config_errors_are_one_line_exit_2(tmp_path, capsys, yaml_text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    assert launch.main(["--config", str(path), "--gpus", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and key in err


def test_bad_gpu_list_is_a_usage_error(tmp_path, capsys):
    path = write_config(tmp_path)
    assert launch.main(["--config", str(path), "--gpus", "0,x"]) == 2
    assert "--gpus" in capsys.readouterr().err


def test_home_stages_split_by_cost_or_by_producers():
    from common.graph import default_graph
    graph = default_graph(load_config())
    assert launch.assign_homes(["cpu"], graph, None) == [("cpu", "both")]
    assert [r for _, r in launch.assign_homes(["0", "1", "2"], graph, None)] == ["gen", "sty", "sty"]
    assert [r for _, r in launch.assign_homes(["0", "1", "2"], graph, 2)] == ["gen", "gen", "sty"]


def test_two_workers_with_split_home_stages_share_the_work(tmp_path, monkeypatch):
    from common.workers.supervisor import Supervisor
    # Jobs last long enough (12 x 0.3 s) that the second worker is up before the first could finish them all,
    # even on a loaded 2-core machine where a Python start takes a second.
    monkeypatch.setenv("JSTYLEID_FAKE_MS", "300-350")
    path = write_config(tmp_path, producer={"batch": 1}, consumer={"batch": 1})
    config, graph, nodes, q = graph_of(path)
    q.layout.make()
    plan(q, nodes)
    sup = Supervisor(config, path, [("cpu", "gen"), ("cpu", "sty")], q, log=lambda msg: None)
    assert sup.run() == 0
    assert all(slot.jobs_done > 0 for slot in sup.slots)
    assert sum(slot.jobs_done for slot in sup.slots) == len(nodes)
    check_invariants(path)
