"""The generic queue: idempotent enqueue, exclusive claims across processes, retry with backoff,
dead-lettering, batch isolation, quarantine of bad files, reclaim of a dead worker's jobs, follow-up
jobs published on completion, and dependencies (blocked jobs released, or dead-lettered with theirs).
The stages here are stand-ins whose output is one marker file: the queue knows only their rules."""
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from common.jobqueue.job import CorruptJob, Job, loads, read_job
from common.jobqueue.queue import Queue


class Rules:
    """A stage whose job is done when OUT/<stage>/<id> exists; `then` names its 1:1 follow-up stage."""

    def __init__(self, out: Path, stage: str, then: str = None, sharded: bool = False):
        self.out, self.stage, self.then, self.sharded = out, stage, then, sharded
        self.cleaned = []

    def output(self, job):
        return self.out / self.stage / job.id

    def done(self, job):
        return self.output(job).exists()

    def temp_files(self, job):
        return [self.output(job)]

    def follow_ups(self, job):
        return [job.follow(self.then)] if self.then else []

    def after_done(self, job):
        self.cleaned.append(job.id)


def make_queue(root: Path, fsync=False) -> Queue:
    rules = {"prep": Rules(root / "out", "prep"), "make": Rules(root / "out", "make", then="use", sharded=True),
             "use": Rules(root / "out", "use")}
    return Queue(root / "q", rules, fsync=fsync)


def job(i: int, stage="use", group="00", after=()) -> Job:
    return Job(id=f"{i:020x}"[::-1], stage=stage, group=group, plan="p", payload={"n": i}, after=after)


def fill(q: Queue, n: int, stage="use", groups=("00",)):
    for i in range(n):
        assert q.enqueue(job(i, stage, groups[i % len(groups)]))


def finish(q: Queue, wid: str, j: Job):
    """What a stage does: write the output; then the worker completes the job."""
    out = q.rules[j.stage].output(j)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("ok")
    q.complete(wid, j)


def test_a_job_record_round_trips_and_a_bad_one_is_corrupt(tmp_path):
    j = job(1, after=("prep.x",))
    path = tmp_path / f"{j.id}.json"
    path.write_bytes(j.dumps())
    assert read_job(path) == j
    for bad in (b"{garbage", b"[]", j.dumps().replace(b'"attempts": 0', b'"attempts": "0"'),
                j.dumps().replace(b'"v": 2', b'"v": 1'), j.dumps()[:-1] + b', "owner": "x"}'):
        with pytest.raises(CorruptJob):
            loads(bad, path)
    with pytest.raises(CorruptJob, match="file name"):
        loads(j.dumps(), tmp_path / "other.json")
    link = tmp_path / "link.json"
    link.symlink_to(path)
    with pytest.raises(CorruptJob):  # a planted link is not followed
        read_job(link)


def test_enqueue_is_idempotent(tmp_path):
    q = make_queue(tmp_path, fsync=True)
    assert q.enqueue(job(1, "make")) and not q.enqueue(job(1, "make"))
    assert len(q.scan("make")["pending"]) == 1 and not list(q.layout.tmp.iterdir())


def _race(root, wid, barrier, marks):
    q = make_queue(root)
    claimer = q.claimer("use", wid)
    barrier.wait()
    while True:
        jobs = claimer.claim(1)
        if not jobs:
            return
        fd = os.open(marks / f"{jobs[0].id}.{wid}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
        finish(q, wid, jobs[0])


@pytest.mark.timeout(60)
def test_eight_processes_claim_each_job_exactly_once(tmp_path):
    q = make_queue(tmp_path)
    fill(q, 500, groups=("00", "01", "02"))
    marks = tmp_path / "marks"
    marks.mkdir()
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_race, args=(tmp_path, f"w{i}", barrier, marks)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(50)
    assert all(p.exitcode == 0 for p in procs)
    ids = [name.split(".")[0] for name in os.listdir(marks)]
    assert len(ids) == 500 and len(set(ids)) == 500
    scan = q.scan("use")
    assert len(scan["done"]) == 500 and not scan["pending"] and not scan["claimed"]
    assert all(read_job(p).attempts == 0 for p in scan["done"].values())


def test_a_batch_holds_one_group_and_prefers_the_last(tmp_path):
    q = make_queue(tmp_path)
    fill(q, 12, stage="make", groups=("00", "01"))
    c = q.claimer("make", "w")
    batch = c.claim(4)
    assert len(batch) == 4 and len({j.group for j in batch}) == 1
    assert {j.group for j in c.claim(4, prefer_group=batch[0].group)} == {batch[0].group}


def test_failed_job_retries_after_backoff_then_dead_letters(tmp_path):
    q = make_queue(tmp_path)
    fill(q, 1)
    c = q.claimer("use", "w")
    for failed_before in (0, 1):
        (j,) = c.claim(1)
        assert j.attempts == failed_before
        assert q.fail("w", j, "exception", "boom", backoff_base=100) == "retry"
        assert q.promote_due("use") == 0 and q.promote_due("use", now=j.not_before + 1) == 1
    (j,) = c.claim(1)
    assert q.fail("w", j, "exception", "boom\nValueError: last line") == "failed"
    failed = read_job(q.layout.failed_path("use", j.id))
    assert failed.attempts == 3 and [e["kind"] for e in failed.errors] == ["exception"] * 3


def test_failure_inside_a_batch_is_not_counted_and_isolates_the_job(tmp_path):
    q = make_queue(tmp_path)
    fill(q, 3)
    c = q.claimer("use", "w")
    for j in c.claim(3):
        assert q.fail("w", j, "exit", "worker died", isolate=True) == "pending"
    again = c.claim(3)
    assert len(again) == 1 and again[0].attempts == 0 and again[0].solo
    assert len(q.scan("use")["pending"]) == 2  # the undone claim went back untouched


def test_corrupt_job_is_quarantined_when_claimed(tmp_path):
    q = make_queue(tmp_path)
    fill(q, 2)
    bad = sorted(q.scan("use")["pending"].values())[0]
    bad.write_text("{garbage")
    assert len(q.claimer("use", "w").claim(2)) == 1
    (why,) = q.layout.corrupt_dir("use").glob("*.why")
    assert "not valid JSON" in why.read_text()


def test_reclaim_completes_finished_work_and_requeues_the_rest(tmp_path):
    q = make_queue(tmp_path)
    fill(q, 2)
    done, lost = q.claimer("use", "dead").claim(1) + q.claimer("use", "dead").claim(1)
    q.rules["use"].output(done).parent.mkdir(parents=True)
    q.rules["use"].output(done).write_text("ok")
    stray = q.rules["use"].output(lost).parent / f".{lost.id}.123.abc.tmp"
    stray.write_text("half")
    outcomes = {jid: o for _, jid, o in q.reclaim("dead", counted=True, reason="killed by SIGKILL")}
    assert outcomes == {done.id: "done", lost.id: "pending"}
    requeued = read_job(q.scan("use")["pending"][lost.id])
    assert requeued.attempts == 0 and requeued.solo  # two jobs were claimed: isolated, uncounted
    assert not q.layout.claimed_dir("use", "dead").exists() and not stray.exists()


def test_a_release_or_an_uncounted_reclaim_spends_no_attempt(tmp_path):
    q = make_queue(tmp_path)
    fill(q, 2)
    (j,) = q.claimer("use", "w").claim(1)
    q.release("w", j)
    q.claimer("use", "dead").claim(1)
    q.reclaim("dead", counted=False, reason="launcher restarted")
    assert [read_job(p).attempts for p in q.scan("use")["pending"].values()] == [0, 0]


def test_completion_publishes_the_follow_up_once_and_runs_the_stage_cleanup(tmp_path):
    q = make_queue(tmp_path)
    q.enqueue(job(1, "make"))
    (j,) = q.claimer("make", "w").claim(1)
    finish(q, "w", j)
    assert list(q.scan("use")["pending"]) == [j.id] and q.rules["make"].cleaned == [j.id]
    assert not q.publish(j.follow("use"))  # already queued: a reclaimed job publishing again adds nothing


def test_a_blocked_job_waits_for_its_dependency_then_becomes_claimable(tmp_path):
    q = make_queue(tmp_path)
    prep = job(9, "prep")
    q.enqueue(prep)
    for i in range(3):
        q.enqueue(job(i, "make", after=(prep.key,)))
    assert len(q.scan("make")["blocked"]) == 3 and not q.has_pending("make") and q.in_flight()
    (p,) = q.claimer("prep", "w").claim(1)
    finish(q, "w", p)
    assert len(q.scan("make")["pending"]) == 3 and not q.scan("make")["blocked"]
    assert not q.layout.blocked_dir("make", prep.key).exists()
    late = job(7, "make", after=(prep.key,))  # enqueued after its dependency finished: pending at once
    assert q.enqueue(late) and late.id in q.scan("make")["pending"]


def test_a_job_waiting_for_several_moves_on_after_the_last(tmp_path):
    q = make_queue(tmp_path)
    a, b = job(1, "prep"), job(2, "prep")
    q.enqueue(a), q.enqueue(b)
    waiter = job(3, "make", after=(a.key, b.key))
    q.enqueue(waiter)
    c = q.claimer("prep", "w")
    finish(q, "w", next(j for j in c.claim(1, prefer_group="00")))
    assert waiter.id in q.scan("make")["blocked"]
    finish(q, "w", c.claim(1)[0])
    assert waiter.id in q.scan("make")["pending"]


def test_a_dead_lettered_dependency_dead_letters_its_waiters_and_theirs(tmp_path):
    q = make_queue(tmp_path)
    prep = job(9, "prep")
    q.enqueue(prep)
    mid = job(1, "make", after=(prep.key,))
    q.enqueue(mid)
    q.enqueue(job(2, "use", after=(mid.key,)))
    c = q.claimer("prep", "w")
    for _ in range(3):
        q.fail("w", c.claim(1)[0], "exception", "boom", backoff_base=0)
    assert set(q.scan("make")["failed"]) == {mid.id} and len(q.scan("use")["failed"]) == 1
    assert "which failed" in read_job(q.layout.failed_path("make", mid.id)).last_error()["text"]
    assert not q.in_flight()


def test_the_sweep_releases_missed_waiters_and_fails_orphans(tmp_path):
    q = make_queue(tmp_path)
    prep, gone = job(9, "prep"), job(8, "prep")
    q.enqueue(prep)
    q.enqueue(job(1, "make", after=(prep.key,)))
    q.enqueue(job(2, "make", after=(gone.key,)))  # its dependency was never queued (or quarantined)
    q.move(q.pending_path(prep), q.layout.done_path("prep", prep.id))  # done, but nobody released
    assert q.sweep_blocked() >= 2
    scan = q.scan("make")
    assert list(scan["pending"]) == [job(1).id] and list(scan["failed"]) == [job(2).id]


@pytest.mark.parametrize("n", [50, 3000])
def test_a_claim_reads_a_bounded_number_of_entries_however_many_jobs_wait(tmp_path, monkeypatch, n):
    import common.jobqueue.queue as queue_module
    q = make_queue(tmp_path)
    fill(q, n, stage="make", groups=("00", "01"))
    claimer = q.claimer("make", "w")
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
