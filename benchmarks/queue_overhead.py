"""Queue overhead per job at growing queue sizes: the O(1) claim proof (docs/queue.md §8).

For each size N it enqueues N jobs of an upstream stage (sharded, 4 groups, like gen), then drains them
with a no-op stage the way a worker does: claim one, complete it (which publishes its downstream job,
like sty), claim that one, complete it. Reported per gen job: enqueue + claim + complete (ms_per_job), the sty job's claim + complete, and
the p99 gen claim latency. A flat ms_per_job across N is the point (growth_ratio_100k_over_1k <= 1.2).
With --fsync all a task costs 6 fsyncs (enqueue: file + folder; gen complete: the sty job's file +
folder, the done folder; sty complete: the done folder), so those figures follow the disk's fsync
latency, measured before each size and reported as fsync_us_<N>.

The control is a naive queue: one unsharded pending folder, a full sorted listdir
per claim, rename to done. Its claims cost O(N), so it is timed on the first --naive-sample claims at
each size (the cost while the queue is full) and compared as a ratio.

--procs P drains the same queue with P claimer processes at once (many GPUs, on one host or a cluster's
shared folder): every job is claimed and completed exactly once (checked). Per task (its upstream and its
downstream job): wall milliseconds (enqueue + the whole drain), CPU milliseconds summed over the
processes, the p99 upstream claim, and renames that lost a race per claim; one process drains the same
size beside it. With more processes than cores, a claim also waits for a core, which the p99 includes.

    python benchmarks/queue_overhead.py --jobs 1000,10000,100000 --fsync none --json out.json
    python benchmarks/queue_overhead.py --jobs 100000 --procs 64 --fsync none --json out.json
"""
import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import FSYNC_WORDS  # noqa: E402
from common.jobqueue.job import Job  # noqa: E402
from common.jobqueue.queue import Queue  # noqa: E402

STYLES = 4


class NoOpRules:
    """A stage whose outputs the worker has checked already (a queue-only benchmark): the queue's own
    work is measured; `then` is the downstream stage its completion publishes."""

    def __init__(self, sharded: bool, then: str = None):
        self.sharded, self.then = sharded, then

    def done(self, job):
        return False  # asked only by publish(): the downstream output does not exist yet

    def temp_files(self, job):
        return ()

    def follow_ups(self, job):
        return [job.follow(self.then)] if self.then else []

    def after_done(self, job):
        pass


def make_job(i: int) -> Job:
    import hashlib
    jid = hashlib.sha256(str(i).encode()).hexdigest()[:20]
    return Job(id=jid, stage="up", group=f"{i % STYLES:02d}", plan="bench",
               payload={"prompt": f"prompt {i}", "name": f"prompt {i}", "seed": 0})


def ours(root: Path, n: int, fsync: bool) -> dict:
    q = make_queue(root, n, fsync)
    jobs = [make_job(i) for i in range(n)]
    t0 = time.perf_counter()
    for job in jobs:
        q.enqueue(job)
    enqueue_s = time.perf_counter() - t0
    gen, sty = q.claimer("up", "bench-g0-1"), q.claimer("down", "bench-g0-1")
    claims, gen_s, sty_s = [], 0.0, 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        (job,) = gen.claim(1)
        t1 = time.perf_counter()
        q.complete(gen.wid, job)
        t2 = time.perf_counter()
        (sjob,) = sty.claim(1)
        q.complete(sty.wid, sjob)
        t3 = time.perf_counter()
        claims.append(t1 - t0)
        gen_s += t2 - t0
        sty_s += t3 - t2
    assert not gen.claim(1) and q.count_done("up") == n == q.count_done("down")
    claims.sort()
    return {"ms_per_job": (enqueue_s + gen_s) / n * 1e3, "ms_per_task": (enqueue_s + gen_s + sty_s) / n * 1e3,
            "enqueue_us": enqueue_s / n * 1e6,
            "claim_complete_us": gen_s / n * 1e6, "sty_claim_complete_us": sty_s / n * 1e6,
            "p99_claim_ms": claims[int(0.99 * (n - 1))] * 1e3}


def make_queue(root: Path, n: int, fsync: bool) -> Queue:
    q = Queue(root / "q", {"up": NoOpRules(True, then="down"), "down": NoOpRules(False)}, fsync=fsync)
    q.layout.make()
    for hh in range(256):  # the folders a run's first plan creates once (1024 shards + 256 done shards)
        q._mkdir(q.layout.done_path("up", f"{hh:02x}").parent)
        q._mkdir(q.layout.done_path("down", f"{hh:02x}").parent)
        for style in range(STYLES):
            q._mkdir(q.layout.pending_dir("up", f"{style:02d}", f"{hh:02x}"))
    return q


def _drain(q: Queue, index: int, go, results):
    """One claimer process: gen job, complete (publishes its sty job), a sty job, complete; then the
    sty jobs left. Reports its claim latencies, completions and lost rename races."""
    lost = [0]
    rename = os.rename

    def counted_rename(src, dst):
        try:
            rename(src, dst)
        except FileNotFoundError:
            lost[0] += 1
            raise
    os.rename = counted_rename  # this process only: count the claims' lost races
    wid = f"bench{index}-g0-{os.getpid()}"
    gen, sty = q.claimer("up", wid), q.claimer("down", wid)
    claims, completed = [], 0
    go.wait()
    while True:
        t0 = time.perf_counter()
        got = gen.claim(1)
        if not got:
            break
        claims.append(time.perf_counter() - t0)
        completed += q.complete(wid, got[0])
        for sjob in sty.claim(1):
            completed += q.complete(wid, sjob)
    while True:
        got = sty.claim(1)
        if not got:
            break
        completed += q.complete(wid, got[0])
    results.put((claims, completed, lost[0]))


def concurrent(root: Path, n: int, fsync: bool, procs: int) -> dict:
    """The same drain by `procs` processes at once."""
    q = make_queue(root, n, fsync)
    t0 = time.perf_counter()
    for i in range(n):
        q.enqueue(make_job(i))
    enqueue_s = time.perf_counter() - t0
    ctx = mp.get_context("fork")
    go, results = ctx.Event(), ctx.SimpleQueue()
    workers = [ctx.Process(target=_drain, args=(q, i, go, results)) for i in range(procs)]
    for w in workers:
        w.start()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    go.set()
    got = [results.get() for _ in workers]
    wall = time.perf_counter() - t0
    for w in workers:
        w.join()
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    claims = sorted(c for cl, _, _ in got for c in cl)
    completed, lost = sum(c for _, c, _ in got), sum(lo for _, _, lo in got)
    assert completed == 2 * n and q.count_done("up") == n == q.count_done("down"), (completed, n)
    assert not any(q.scan(s)["claimed"] or q.scan(s)["pending"] for s in ("up", "down"))
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return {"ms_per_task": (enqueue_s + wall) / n * 1e3, "drain_wall_ms_per_task": wall / n * 1e3,
            "cpu_ms_per_task": cpu / n * 1e3, "enqueue_us": enqueue_s / n * 1e6,
            "p99_claim_ms": claims[int(0.99 * (len(claims) - 1))] * 1e3,
            "lost_races_per_claim": lost / (2 * n), "procs": procs}


def naive(root: Path, n: int, fsync: bool, sample: int) -> dict:
    """One pending folder, a full listdir per claim (a plain design)."""
    pending, done = root / "naive" / "pending", root / "naive" / "done"
    pending.mkdir(parents=True)
    done.mkdir()
    t0 = time.perf_counter()
    for i in range(n):
        with open(pending / f"{i:08d}.json", "w") as f:
            f.write(json.dumps({"id": i}))
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    enqueue_s = time.perf_counter() - t0
    k = min(n, sample)
    t0 = time.perf_counter()
    for _ in range(k):
        name = sorted(os.listdir(pending))[0]
        os.rename(pending / name, done / name)
    return {"ms_per_job": (enqueue_s / n + (time.perf_counter() - t0) / k) * 1e3}


def fsync_us(root: Path, k: int = 50) -> float:
    """This filesystem's fsync latency right now (the fsync=all figures scale with it)."""
    path = root / "fsync-probe"
    with open(path, "wb") as f:
        t0 = time.perf_counter()
        for _ in range(k):
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
        return (time.perf_counter() - t0) / k * 1e6


def label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", default="1000,10000,100000", help="comma-separated queue sizes")
    p.add_argument("--fsync", choices=tuple(FSYNC_WORDS), default="all", help="as queue.fsync in a config")
    p.add_argument("--naive-sample", type=int, default=300, help="claims timed for the naive control")
    p.add_argument("--dir", default=None, help="where the queues live (default: the system temp folder)")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--procs", type=int, default=1, help="claimer processes draining the queue at once")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.jobs.split(",")]
    fsync = FSYNC_WORDS[args.fsync]
    if args.procs > 1:
        return main_concurrent(args, sizes, fsync)
    result = {"fsync": args.fsync, "styles": STYLES, "naive_sample_claims": args.naive_sample,
              "filesystem_dir": args.dir or tempfile.gettempdir()}
    print(f"fsync={args.fsync}; per upstream job: enqueue + claim + complete (complete publishes the downstream job)")
    print(f"{'jobs':>8} {'ms/job':>8} {'enq us':>8} {'claim+done us':>14} {'sty us':>8} {'p99 claim ms':>13}"
          f" {'naive ms/job':>13} {'naive/ours':>11} {'fsync us':>9}")
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix="jstyleid-qbench-", dir=args.dir))
        try:
            probe = fsync_us(root)
            r = ours(root, n, fsync)
            nv = naive(root, n, fsync, args.naive_sample)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        key = label(n)
        result.update({f"ms_per_job_{key}": r["ms_per_job"], f"enqueue_us_{key}": r["enqueue_us"],
                       f"claim_complete_us_{key}": r["claim_complete_us"],
                       f"sty_claim_complete_us_{key}": r["sty_claim_complete_us"],
                       f"p99_claim_ms_{key}": r["p99_claim_ms"], f"naive_ms_per_job_{key}": nv["ms_per_job"],
                       f"naive_over_ours_{key}": nv["ms_per_job"] / r["ms_per_job"], f"fsync_us_{key}": probe})
        print(f"{n:>8} {r['ms_per_job']:>8.3f} {r['enqueue_us']:>8.1f} {r['claim_complete_us']:>14.1f} "
              f"{r['sty_claim_complete_us']:>8.1f} {r['p99_claim_ms']:>13.3f} {nv['ms_per_job']:>13.3f} "
              f"{nv['ms_per_job'] / r['ms_per_job']:>10.1f}x {probe:>9.0f}", flush=True)
    growth(result, sizes, "ms_per_job")  # (the smallest size pays the first touch of 1024 empty shards)
    print("target <= 2 ms/job")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


def growth(result: dict, sizes: list, figure: str):
    """The largest size's `figure` over each smaller size's: the O(1) claim proof."""
    last = label(sizes[-1])
    for n in sizes[:-1]:
        key = f"growth_ratio_{last}_over_{label(n)}"
        result[key] = result[f"{figure}_{last}"] / result[f"{figure}_{label(n)}"]
        print(f"growth ratio {last}/{label(n)}: {result[key]:.2f} (target <= 1.2)")


def main_concurrent(args, sizes: list, fsync: bool):
    """--procs P: P processes drain each size at once; one process drains the same size beside it."""
    result = {"fsync": args.fsync, "styles": STYLES, "procs": args.procs, "cpus": os.cpu_count(),
              "filesystem_dir": args.dir or tempfile.gettempdir()}
    print(f"fsync={args.fsync}; {args.procs} claimer processes on {os.cpu_count()} CPU(s); per task (both columns): "
          f"enqueue + claim + complete of the upstream job and of the downstream job it publishes")
    print(f"{'tasks':>8} {'ms/task':>8} {'drain ms/task':>14} {'cpu ms/task':>12} {'p99 claim ms':>13} "
          f"{'lost/claim':>11} {'1 proc ms/task':>15} {'P/1':>6}")
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix="jstyleid-qbench-", dir=args.dir))
        try:
            r = concurrent(root / "p", n, fsync, args.procs)
            one = ours(root / "one", n, fsync)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        key = label(n)
        result.update({f"{k}_{key}": v for k, v in r.items() if k != "procs"})
        result[f"one_proc_ms_per_task_{key}"] = one["ms_per_task"]
        result[f"procs_over_one_{key}"] = r["ms_per_task"] / one["ms_per_task"]
        print(f"{n:>8} {r['ms_per_task']:>8.3f} {r['drain_wall_ms_per_task']:>14.3f} {r['cpu_ms_per_task']:>12.3f} "
              f"{r['p99_claim_ms']:>13.3f} {r['lost_races_per_claim']:>11.3f} {one['ms_per_task']:>15.3f} "
              f"{r['ms_per_task'] / one['ms_per_task']:>6.2f}", flush=True)
    growth(result, sizes, "ms_per_task")
    print("every job claimed and completed exactly once (checked)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
