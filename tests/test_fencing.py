"""Fences for a worker that outlives its claim (docs/queue.md §10): on a cluster a silent worker's jobs may
be given to another before its death can be proven, so whatever it does late must change nothing.
Outputs are placed once (the first whole file wins), a done record is linked once (a second completion
is not counted), a claim taken away completes, fails and releases nothing, and a worker silent past its
TTL stops at its next beat without touching the queue."""
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

from common.atomic import write_npy, write_png
from common.config import load_config
from common.jobqueue import lease
from common.jobqueue.planner import plan
from common.workers.worker import EXIT_FENCED, Worker
from queue_fixtures import check_invariants, graph_of, tasks_of, wait_for, write_config
from test_queue import fill, finish, make_queue

CTX = mp.get_context("fork")


def test_an_output_is_placed_once_unless_the_one_there_is_not_whole(tmp_path):
    png, npy = tmp_path / "a.png", tmp_path / "a.npy"
    write_png(png, np.zeros((4, 4, 3), np.uint8), fsync=False)
    first = os.stat(png).st_ino
    write_png(png, np.full((4, 4, 3), 9, np.uint8), fsync=False)  # a late writer: dropped
    assert os.stat(png).st_ino == first and np.asarray(Image.open(png)).max() == 0
    png.write_bytes(png.read_bytes()[:20])  # truncated (a power loss): the next whole one replaces it
    write_png(png, np.full((4, 4, 3), 9, np.uint8), fsync=False)
    assert np.asarray(Image.open(png)).max() == 9
    write_png(png, np.full((4, 4, 3), 7, np.uint8), fsync=False, replace=True)
    assert np.asarray(Image.open(png)).max() == 7
    write_npy(npy, np.ones(3, np.float32), fsync=False)
    write_npy(npy, np.zeros(3, np.float32), fsync=False)
    assert np.load(npy).tolist() == [1, 1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "a.png"]  # no temp file left


def test_a_claim_taken_away_completes_fails_and_releases_nothing(tmp_path):
    q = make_queue(tmp_path)
    fill(q, 1)
    (late,) = q.claimer("use", "slow").claim(1)
    assert q.reclaim("slow", counted=True, reason="lease expired", backoff_base=0.0) == [("use", late.id, "pending")]
    (j,) = q.claimer("use", "next").claim(1)
    finish(q, "next", j)
    done = q.layout.done_path("use", j.id)
    record = os.stat(done).st_ino
    assert not q.complete("slow", late)
    assert q.fail("slow", late, "exception", "late") == "lost"
    assert not q.release("slow", late)
    assert os.stat(done).st_ino == record and q.count_done("use") == 1
    assert not q.layout.claimed_dir("use", "slow").exists() or not any(q.layout.claimed_dir("use", "slow").iterdir())


def test_a_duplicate_of_a_done_job_is_not_counted_again(tmp_path):
    q = make_queue(tmp_path)
    fill(q, 1)
    (j,) = q.claimer("use", "a").claim(1)
    twin = q.layout.claimed_dir("use", "b") / f"{j.id}.json"  # the same job held twice (a lost race)
    twin.parent.mkdir(parents=True)
    twin.write_bytes(j.dumps())
    finish(q, "a", j)
    record = os.stat(q.layout.done_path("use", j.id)).st_ino
    assert not q.complete("b", j)
    assert not twin.exists() and os.stat(q.layout.done_path("use", j.id)).st_ino == record
    assert q.scan("use")["claimed"] == {} and q.count_done("use") == 1


def _run(config_path, fake_ms, fenced=False):
    p = CTX.Process(target=_work_main, args=(config_path, fake_ms, fenced))
    p.start()
    return p


def _work_main(config_path, fake_ms, fenced):
    """The worker as main() runs it (Fenced becomes exit 4), in a forked process."""
    os.environ["JSTYLEID_FAKE_MS"] = fake_ms
    from common.jobqueue.lease import Fenced
    worker = Worker(load_config(config_path), "cpu", "both", 1, fenced=fenced)
    try:
        code = worker.run()
    except Fenced:
        code = EXIT_FENCED
    os._exit(code)


def test_a_worker_stopped_past_its_ttl_whose_jobs_went_to_another_changes_nothing_when_it_resumes(tmp_path):
    # One TTL for both phases: a stage's first batch runs under the loading TTL, and the worker may have
    # just moved on to one when it is stopped.
    path = write_config(tmp_path, queue={"ttl_loading_s": 1.0, "ttl_working_s": 1.0},
                        producer={"batch": 1}, consumer={"batch": 1})
    config, graph, nodes, q = graph_of(path)
    plan(q, nodes)
    slow = _run(path, "300-400", fenced=True)
    wid = lease.make_wid("cpu", slow.pid)
    wait_for(lambda: any(q.scan(s)["claimed"] for s in q.stages) and
             (lease.read(q.layout.lease_path(wid)) or {}).get("phase") == "working")
    os.kill(slow.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    # What a cluster launcher does once the lease has been silent for its TTL and the node cannot be asked.
    taken = q.reclaim(wid, counted=True, reason="lease expired", backoff_base=0.0)
    assert taken and all(outcome in ("pending", "done") for _, _, outcome in taken)
    other = _run(path, "0")
    other.join(30)
    assert other.exitcode == 0
    _, tasks = tasks_of(path)
    placed = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for t in tasks
              for p in (t.files["output_png"], t.files["content_png"]) if p.exists()}
    done = {s: q.count_done(s) for s in q.stages}
    wait_for(lambda: time.monotonic() - stopped > 1.5, 5)  # past its TTL, whatever the machine
    os.kill(slow.pid, signal.SIGCONT)
    slow.join(20)
    assert slow.exitcode == EXIT_FENCED
    assert {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in placed} == placed
    assert {s: q.count_done(s) for s in q.stages} == done
    check_invariants(path)


def test_a_worker_stopped_between_batches_is_fenced_before_it_claims_or_exits(tmp_path, monkeypatch):
    # The race the test above can meet: stopped just after a batch's last write, the worker finds the queue
    # finished by another and would exit 0 (or claim a job) as if it had never been silent.
    path = write_config(tmp_path, queue={"ttl_loading_s": 1.0, "ttl_working_s": 1.0})
    worker = Worker(load_config(path), "cpu", "both", 1, fenced=True)  # nothing planned: nothing in flight
    write = worker.lease._write

    def write_then_stopped():
        write()
        worker.lease._written -= 60.0  # a minute's SIGSTOP right after this write

    monkeypatch.setattr(worker.lease, "_write", write_then_stopped)
    with pytest.raises(lease.Fenced):
        worker.run()
