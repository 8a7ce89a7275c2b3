"""Crash recovery (docs/queue.md §4, §7): a worker SIGKILLed at any named point or at a random moment loses
nothing and leaves exactly one valid output per task after recovery."""
import multiprocessing as mp
import os
import random
import signal
import time

import pytest

from common.config import load_config
from common.jobqueue import crash
from common.jobqueue.lease import make_wid
from common.jobqueue.planner import plan
from common.jobqueue.queue import Queue
from common.workers.worker import Worker
from queue_fixtures import check_invariants, graph_of, write_config

POINTS = ["after_claim", "mid_output", "after_output", "after_stage", "after_publish", "before_done"]
CTX = mp.get_context("fork")


def _work(config_path, home, n_workers, crash_spec, fake_ms):
    os.environ["JSTYLEID_FAKE_MS"] = fake_ms
    crash.arm(crash_spec)
    code = Worker(load_config(config_path), "cpu", home, n_workers).run()
    os._exit(code)


def start(config_path, home="both", n_workers=1, crash_spec="", fake_ms="0"):
    p = CTX.Process(target=_work, args=(config_path, home, n_workers, crash_spec, fake_ms))
    p.start()
    return p


def planned(tmp_path):
    path = write_config(tmp_path)
    config, graph, nodes, q = graph_of(path)
    plan(q, nodes)
    return path, q


def reclaim_dead(q: Queue, proc):
    """What the launcher does once waitpid proved the death."""
    return q.reclaim(make_wid("cpu", proc.pid), counted=True, reason=f"exit {proc.exitcode}", backoff_base=0.0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("point", POINTS)
def test_crash_at_each_named_point_then_rerun_keeps_the_invariants(tmp_path, point):
    path, q = planned(tmp_path)
    first = start(path, crash_spec=f"{point}:2")
    first.join(20)
    assert first.exitcode == -signal.SIGKILL, f"{point} was never reached"
    reclaim_dead(q, first)
    rerun = start(path)
    rerun.join(20)
    assert rerun.exitcode == 0
    check_invariants(path)


@pytest.mark.timeout(90)
def test_random_sigkill_of_a_worker_loses_nothing(tmp_path):
    seed = int(os.environ.get("JSTYLEID_FAULT_SEED", time.time_ns() % 10**6))
    trials = int(os.environ.get("JSTYLEID_FAULT_TRIALS", 20))
    print(f"random SIGKILL seed {seed} ({trials} trials; rerun with JSTYLEID_FAULT_SEED={seed})")
    rng = random.Random(seed)
    for trial in range(trials):
        path, q = planned(tmp_path / f"t{trial}")
        workers = [start(path, "gen", 2, fake_ms="2-6"), start(path, "sty", 2, fake_ms="2-6")]
        victim = workers[rng.randrange(2)]
        time.sleep(rng.uniform(0.0, 0.12))
        victim.kill()
        victim.join(10)
        reclaim_dead(q, victim)
        survivor = next(w for w in workers if w is not victim)
        survivor.join(30)
        assert survivor.exitcode == 0, f"trial {trial} (seed {seed}): survivor exit {survivor.exitcode}"
        check_invariants(path)
        config, graph, nodes, q = graph_of(path)
        report = plan(q, nodes)
        assert report.finished == report.total == 6  # a rerun has nothing left to do
