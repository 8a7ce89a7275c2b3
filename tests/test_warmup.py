"""A cold kernel cache on a multi-worker start: one warm-up process first, and Jittor's own compile lock.

The warm-up's ordering and failure handling are tested with the stand-in stages (no Jittor); the real
check is that two Jittor processes compiling the same new kernel at once (an empty cache for that op,
Jittor's compiled core kept, so no minutes-long core rebuild) are serialised by Jittor's lock and both
succeed.
"""
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from common.jobqueue.planner import plan
from common.workers.supervisor import Supervisor
from queue_fixtures import check_invariants, graph_of, wait_for, write_config

REPO = Path(__file__).resolve().parents[1]


def two_slot_supervisor(tmp_path, monkeypatch):
    path = write_config(tmp_path, producer={"batch": 2}, consumer={"batch": 2})
    config, graph, nodes, q = graph_of(path)
    q.layout.make()
    plan(q, nodes)
    logs = []
    sup = Supervisor(config, path, [("cpu", "gen"), ("cpu", "sty")], q, log=logs.append)
    events = []
    real_spawn, real_warm_up = sup.spawn, sup.warm_up
    monkeypatch.setattr(sup, "spawn", lambda slot: (events.append("spawn"), real_spawn(slot)))
    monkeypatch.setattr(sup, "warm_up", lambda: (events.append("warm"), real_warm_up(), events.append("warm done"))[1])
    return path, nodes, q, sup, events, logs


def test_workers_start_only_after_the_warm_up_ran_both_stages(tmp_path, monkeypatch):
    path, nodes, q, sup, events, logs = two_slot_supervisor(tmp_path, monkeypatch)
    assert sup.run() == 0, logs
    assert events[:3] == ["warm", "warm done", "spawn"]
    log = (q.layout.logs / "warmup.log").read_text()
    assert "warming gen" in log and "warming sty" in log and "warm-up done" in log
    assert sum(slot.jobs_done for slot in sup.slots) == len(nodes)
    check_invariants(path)  # the warm-up's outputs went elsewhere: the run's are exactly the jobs'


def test_a_failing_warm_up_starts_no_worker_and_costs_no_attempt(tmp_path, monkeypatch):
    path, nodes, q, sup, events, logs = two_slot_supervisor(tmp_path, monkeypatch)
    monkeypatch.setenv("JSTYLEID_POISON", "Dolphin")  # the first prompt: the stand-in stage aborts on it
    assert sup.run() == 1
    assert "spawn" not in events
    assert any("warm-up on gpu cpu failed" in line and "no job was run" in line for line in logs)
    assert q.failures() == [] and not any(q.scan("gen").get(k) for k in ("claimed", "retry", "done"))


def test_one_worker_needs_no_warm_up(tmp_path):
    path = write_config(tmp_path)
    config, graph, nodes, q = graph_of(path)
    assert Supervisor(config, path, [("cpu", "both")], q, log=lambda m: None).warm_up() is None


def test_jittor_serialises_two_cold_compiles_of_one_kernel(tmp_path):
    from common.jittor_env import load_jittor
    jt = load_jittor()
    cache = Path(jt.flags.cache_path)
    tag = f"jstyleid cold-cache test {time.time_ns()}"  # a kernel no cache holds yet
    code = ("import sys\nfrom pathlib import Path\nfrom common.jittor_env import load_jittor\n"
            "jt = load_jittor(use_cuda=False)\nPath(sys.argv[1]).touch()\n"
            f"x = jt.code((5,), 'float32', [], cpu_src='/* {tag} */ for (int i = 0; i < 5; i++) out0_p[i] = i * 2;')\n"
            "print(x.numpy().tolist())")
    started = time.time()
    with open(cache.parent / "jittor.lock", "a") as lock:  # the lock Jittor takes around every compile
        fcntl.lockf(lock, fcntl.LOCK_EX)
        procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"imported{i}")], cwd=REPO,
                                  env=dict(os.environ, PYTHONPATH=str(REPO)), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
        try:
            assert wait_for(lambda: all((tmp_path / f"imported{i}").exists() for i in range(2)), timeout=240)
            time.sleep(3)
            assert [p.poll() for p in procs] == [None, None]  # both wait to compile
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)
        results = [p.communicate(timeout=240) for p in procs]
    try:
        for proc, (out, err) in zip(procs, results):
            assert proc.returncode == 0, err[-2000:]
            assert out.strip().splitlines()[-1] == "[0.0, 2.0, 4.0, 6.0, 8.0]"
    finally:  # leave the shared cache as it was
        for source in (cache / "jit").glob("*.cc"):
            if source.stat().st_mtime >= started - 1 and tag in source.read_text(errors="replace"):
                for f in (cache / "jit").glob(source.stem + "*"):
                    f.unlink()
