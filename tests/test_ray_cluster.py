"""The launcher on a real Ray cluster of three nodes on this machine (docs/queue.md §10), CPU only, with the
stand-in stages: a worker SIGKILLed, an actor's process SIGKILLed, a node removed mid-run, the driver
SIGKILLed and rerun, a worker stopped past its TTL, a second launcher, a node that cannot see the queue.
After each: every output exists once with the expected bytes, no job is lost, none was run to completion
twice (the ledger stages count each task's writes), and a rerun does only what is missing.

One cluster serves the whole module (a head with no GPU, two nodes with one stand-in GPU each: Ray only
counts GPUs, the stand-in stages need none), so the GPU path runs here: one worker actor per GPU.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import launch
from common.devkit.local_cluster import start as start_cluster
from common.jobqueue import lease
from ledger_stage import runs
from queue_fixtures import REPO, check_invariants, graph_of, tasks_of, wait_for, write_config

pytestmark = pytest.mark.timeout(180)
STYLES = {"00": ["Dolphin", "Lighthouse", "Cat", "Tree"], "01": ["Bicycle", "Mountain", "Boat", "Moon"],
          "02": ["River", "Castle", "Fox", "Owl"]}
TASKS = 12


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster(3, cpus=2, gpus=1)
    yield c
    c.shutdown()


def config(tmp_path, ttl_working=2.0):
    """12 tasks in batches of 1; a worker hangs after 2 s without a beat; its first load may take 30 s
    (Python starting under a loaded CPU)."""
    return write_config(tmp_path, STYLES, queue={"ttl_loading_s": 30.0, "ttl_working_s": ttl_working},
                        stages={"graph": "tests.ledger_stage:graph"}, producer={"batch": 1}, consumer={"batch": 1})


def ray_launch(path, address, *args, fake_ms="100-150", wait=True, timeout=150):
    cmd = [sys.executable, str(REPO / "launch.py"), "--config", str(path), "--ray", address, *args]
    env = dict(os.environ, PYTHONPATH=str(REPO), JSTYLEID_FAKE_MS=fake_ms,
               JSTYLEID_LEDGER=str(path.parent / "ledger.txt"))
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def finish(proc, timeout=150):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def live_leases(queue) -> list:
    return [i for i in (lease.read(p) for p in queue.layout.workers.glob("*.json")) if i and i["phase"] != "exited"]


def working(queue, n=2) -> list:
    """Wait for `n` workers past loading (their first job started), then return their leases."""
    wait_for(lambda: len([i for i in live_leases(queue) if i["phase"] not in ("loading", "idle")]) >= n, 60)
    return [i for i in live_leases(queue) if i["phase"] not in ("loading", "idle")][:n]


def parent_of(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])


def assert_once(path, expect_failed=()):
    """The invariants, and no job's outputs written twice (the ledger)."""
    check_invariants(path, expect_failed)
    twice = {k: n for k, n in runs(path.parent / "ledger.txt").items() if n > 1}
    assert not twice, f"run to completion more than once: {twice}"


def test_a_cluster_run_places_a_worker_per_gpu_shows_nodes_and_a_rerun_does_nothing(cluster, tmp_path, capsys):
    path = config(tmp_path)
    proc = ray_launch(path, cluster.address, wait=False)
    queue = graph_of(path)[3]
    workers = working(queue)
    assert launch.main(["status", "--config", str(path)]) == 0
    status = capsys.readouterr().out
    assert "workers (2):" in status and all(f"on {w['node']}" in status for w in workers)
    assert len({w["node"] for w in workers}) == 2  # one GPU each, on the two GPU nodes
    code, err = finish(proc)
    assert code == 0, err
    assert_once(path)
    assert err.count(" on ") >= 2 and "slot 0" in err and "slot 1" in err
    logs = list((tmp_path / "q" / "logs").glob("*.log"))
    assert sum("no job left" in p.read_text() for p in logs) == 2  # each worker's log, in the queue folder
    again = ray_launch(path, cluster.address)
    assert again.returncode == 0 and f"{TASKS} finished, 0 failed; jobs: 0 to generate" in again.stderr, again.stderr


def test_sigkill_of_a_worker_and_of_another_worker_actor_loses_nothing(cluster, tmp_path):
    path = config(tmp_path)
    proc = ray_launch(path, cluster.address, wait=False)
    queue = graph_of(path)[3]
    a, b = working(queue)
    os.kill(a["pid"], signal.SIGKILL)  # the worker: its actor's waitpid reports it
    os.kill(parent_of(b["pid"]), signal.SIGKILL)  # the actor: Ray reports it, the orphaned worker stops
    code, err = finish(proc)
    assert code == 0, err
    assert f"worker {a['wid']} killed by SIGKILL" in err
    assert f"worker {b['wid']} lost with its actor or node" in err
    assert_once(path)


def test_a_node_removed_mid_run_loses_nothing(cluster, tmp_path):
    path = config(tmp_path)
    proc = ray_launch(path, cluster.address, wait=False)
    queue = graph_of(path)[3]
    victim = working(queue)[0]
    node = next(n for n in cluster.list_all_nodes() if victim["node"].endswith(":" + n.node_id[:8]))
    cluster.remove_node(node)
    try:
        code, err = finish(proc)
        assert code == 0, err
        assert f"worker {victim['wid']} lost with its actor or node" in err
        assert_once(path)
    finally:
        cluster.add_node(num_cpus=2, num_gpus=1)  # for the tests after this one
        cluster.wait_for_nodes()


def test_driver_sigkill_then_a_rerun_does_only_what_is_missing(cluster, tmp_path):
    path = config(tmp_path)
    proc = ray_launch(path, cluster.address, wait=False)
    queue = graph_of(path)[3]
    working(queue)
    wait_for(lambda: queue.count_done("sty") >= 2, 60)
    proc.kill()
    proc.wait()
    tasks = tasks_of(path)[1]
    wait_for(lambda: not any(lease.alive(i) for i in live_leases(queue)), 30)  # Ray kills the driver's actors,
    # and they their workers
    outputs = [t.files["output_png"] for t in tasks]
    finished = sum(p.exists() for p in outputs)
    before = {p: os.stat(p).st_ino for p in outputs if p.exists()}
    rerun = ray_launch(path, cluster.address)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{finished} finished" in rerun.stderr and finished < TASKS
    assert all(os.stat(p).st_ino == ino for p, ino in before.items())  # nothing finished was redone
    assert_once(path)


def test_a_worker_stopped_past_its_ttl_is_killed_on_its_node_and_its_job_retried(cluster, tmp_path):
    path = config(tmp_path)
    proc = ray_launch(path, cluster.address, fake_ms="150-200", wait=False)
    queue = graph_of(path)[3]
    stalled = working(queue)[0]
    os.kill(stalled["pid"], signal.SIGSTOP)
    code, err = finish(proc)
    assert code == 0, err
    assert f"worker {stalled['wid']} hung: no lease renewal" in err
    assert f"worker {stalled['wid']} hung (lease expired) and was killed" in err
    assert_once(path)


DRIVER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import ray
    from common.workers.ray_slots import RayCluster, SlotActor
    cluster = RayCluster(sys.argv[1], log=lambda m: None)
    blind = ray.get(SlotActor.options(num_cpus=0).remote().start.remote(
        ["python"], {}, "/", sys.argv[2] + "/launcher.json", b"not what this node sees"))
    for _ in sys.stdin:  # a line: try to take the lock, say who holds it (null: we do now)
        print(json.dumps({"held": cluster.lock(Path(sys.argv[2])), "blind": blind.get("error")}), flush=True)
""")


def test_the_cluster_lock_names_its_holder_goes_with_it_and_a_blind_node_says_so(cluster, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    drivers = [subprocess.Popen([sys.executable, "-c", DRIVER, cluster.address, str(tmp_path)], env=env, cwd=REPO,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]

    def ask(driver) -> dict:
        driver.stdin.write("lock\n")
        driver.stdin.flush()
        return json.loads(driver.stdout.readline())

    holder, other = drivers
    first = ask(holder)
    assert first["held"] is None
    assert "cannot see the queue folder" in first["blind"] and "node " in first["blind"]
    assert f"in use by pid {holder.pid} on host" in ask(other)["held"]
    holder.kill()
    holder.wait()
    assert ask(other)["held"] is None  # gone with its driver
    other.stdin.close()
    assert other.wait(30) == 0


def test_without_ray_flag_the_launcher_never_imports_ray():
    out = subprocess.run([sys.executable, "-c", "import launch, sys; print('ray' in sys.modules)"],
                         cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.stdout.strip() == "False", out.stderr
