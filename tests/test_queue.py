"""Queue operations: idempotent enqueue, exclusive claims across processes, retry with backoff,
dead-lettering, batch isolation, quarantine of corrupt files, and reclaim of a dead worker's jobs."""
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from common.atomic import write_png
from common.jobqueue.jobs import new_job, read_job
from common.jobqueue.queue import Queue
from common.stage import Task


def task(i: int, root: Path, style="00") -> Task:
    jid = f"{i:020x}"[::-1]  # spread over shards
    return Task(id=jid, style=style, prompt=f"p{i}", name=f"p{i}", seed=0, style_dir=root,
                content_png=root / "out" / style / "content" / f"p{i}.png",
                content_latent=root / "q" / "content" / f"{jid}.npy", output_png=root / "out" / style / f"p{i}.png")


def fill(q: Queue, root: Path, n: int, stage="sty", styles=("00",)):
    for i in range(n):
        assert q.enqueue(new_job(task(i, root, styles[i % len(styles)]), stage, 3))


def test_enqueue_is_idempotent(tmp_path):
    q = Queue(tmp_path / "q", fsync=True)
    job = new_job(task(1, tmp_path), "gen", 3)
    assert q.enqueue(job) and not q.enqueue(job)
    assert len(q.scan("gen")["pending"]) == 1 and not list(q.layout.tmp.iterdir())


def _race(root, wid, barrier, marks):
    q = Queue(root, fsync=False)
    claimer = q.claimer("sty", wid)
    barrier.wait()
    while True:
        jobs = claimer.claim(1)
        if not jobs:
            return
        fd = os.open(marks / f"{jobs[0]['id']}.{wid}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
        q.complete("sty", wid, jobs[0])


@pytest.mark.timeout(60)
def test_eight_processes_claim_each_job_exactly_once(tmp_path):
    q = Queue(tmp_path / "q", fsync=False)
    fill(q, tmp_path, 500, styles=("00", "01", "02"))
    marks = tmp_path / "marks"
    marks.mkdir()
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_race, args=(tmp_path / "q", f"w{i}", barrier, marks)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(50)
    assert all(p.exitcode == 0 for p in procs)
    ids = [name.split(".")[0] for name in os.listdir(marks)]
    assert len(ids) == 500 and len(set(ids)) == 500
    scan = q.scan("sty")
    assert len(scan["done"]) == 500 and not scan["pending"] and not scan["claimed"]
    assert all(read_job(p)["attempts"] == 0 for p in scan["done"].values())


def test_a_batch_holds_one_style_and_prefers_the_last(tmp_path):
    q = Queue(tmp_path / "q", fsync=False)
    fill(q, tmp_path, 12, stage="gen", styles=("00", "01"))
    c = q.claimer("gen", "w")
    batch = c.claim(4)
    assert len(batch) == 4 and len({j["style"] for j in batch}) == 1
    assert {j["style"] for j in c.claim(4, prefer_style=batch[0]["style"])} == {batch[0]["style"]}


def test_failed_job_retries_after_backoff_then_dead_letters(tmp_path):
    q = Queue(tmp_path / "q", fsync=False)
    fill(q, tmp_path, 1)
    c = q.claimer("sty", "w")
    for failed_before in (0, 1):
        (job,) = c.claim(1)
        assert job["attempts"] == failed_before
        assert q.fail("sty", "w", job, "exception", "boom", backoff_base=100) == "retry"
        assert q.promote_due("sty") == 0 and q.promote_due("sty", now=job["not_before"] + 1) == 1
    (job,) = c.claim(1)
    assert q.fail("sty", "w", job, "exception", "boom\nValueError: last line") == "failed"
    failed = read_job(q.layout.failed_path("sty", job["id"]))
    assert failed["attempts"] == 3 and [e["kind"] for e in failed["errors"]] == ["exception"] * 3


def test_failure_inside_a_batch_is_not_counted_and_isolates_the_job(tmp_path):
    q = Queue(tmp_path / "q", fsync=False)
    fill(q, tmp_path, 3)
    c = q.claimer("sty", "w")
    batch = c.claim(3)
    for job in batch:
        assert q.fail("sty", "w", job, "exit", "worker died", isolate=True) == "pending"
    again = c.claim(3)
    assert len(again) == 1 and again[0]["attempts"] == 0 and again[0]["solo"]
    assert len(q.scan("sty")["pending"]) == 2  # the undone claim went back untouched


def test_corrupt_job_is_quarantined_when_claimed(tmp_path):
    q = Queue(tmp_path / "q", fsync=False)
    fill(q, tmp_path, 2)
    bad = sorted(q.scan("sty")["pending"].values())[0]
    bad.write_text("{garbage")
    jobs = q.claimer("sty", "w").claim(2)
    assert len(jobs) == 1
    (why,) = q.layout.corrupt_dir("sty").glob("*.why")
    assert "not valid JSON" in why.read_text()


def test_reclaim_completes_finished_work_and_requeues_the_rest(tmp_path):
    q = Queue(tmp_path / "q", fsync=False)
    fill(q, tmp_path, 2)
    done, lost = q.claimer("sty", "dead").claim(1) + q.claimer("sty", "dead").claim(1)
    write_png(done["out"], np.zeros((2, 2, 3), np.uint8), fsync=False)
    outcomes = {jid: o for _, jid, o in q.reclaim("dead", counted=True, reason="killed by SIGKILL")}
    assert outcomes == {done["id"]: "done", lost["id"]: "pending"}
    requeued = read_job(q.scan("sty")["pending"][lost["id"]])
    assert requeued["attempts"] == 0 and requeued["solo"]  # two jobs were claimed: isolated, uncounted
    assert not q.layout.claimed_dir("sty", "dead").exists()


def test_a_release_or_an_uncounted_reclaim_spends_no_attempt(tmp_path):
    q = Queue(tmp_path / "q", fsync=False)
    fill(q, tmp_path, 2)
    (job,) = q.claimer("sty", "w").claim(1)
    q.release("sty", "w", job)
    q.claimer("sty", "dead").claim(1)
    q.reclaim("dead", counted=False, reason="launcher restarted")
    assert [read_job(p)["attempts"] for p in q.scan("sty")["pending"].values()] == [0, 0]


@pytest.mark.parametrize("n", [50, 3000])
def test_a_claim_reads_a_bounded_number_of_entries_however_many_jobs_wait(tmp_path, monkeypatch, n):
    import common.jobqueue.queue as queue_module
    q = Queue(tmp_path / "q", fsync=False)
    fill(q, tmp_path, n, stage="gen", styles=("00", "01"))
    claimer = q.claimer("gen", "w")
    claimer.refresh()  # the O(shards) listing, once per run or when the list runs dry
    read = []
    real_files = queue_module._files

    def counting(folder):
        for entry in real_files(folder):
            read.append(entry.name)
            yield entry

    monkeypatch.setattr(queue_module, "_files", counting)
    for _ in range(20):
        read.clear()
        assert len(claimer.claim(1)) == 1
        assert len(read) <= 2 * queue_module.PEEK  # an emptied shard costs one more short listing
