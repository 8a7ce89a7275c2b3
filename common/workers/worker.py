"""The worker loop: one long-lived process per GPU (or one on the CPU), building its stages once.

Each turn it picks a stage (common.workers.scheduling: elastic home stages with back-pressure, or bursts
when one worker does both ends), claims a batch of one group, runs it, checks the outputs and completes the jobs.
Stages outside the balanced pair (per-style work such as training, which later stages wait for) are
taken first. SIGTERM (or the launcher's death, via PR_SET_PDEATHSIG) stops it at the next beat:
unfinished jobs go back to pending uncounted and it exits 0. It exits 0 too when no job is left in flight.
On a cluster (`--fenced`), a worker whose lease went unrenewed past its TTL (stopped, or stuck) may have
lost its jobs to another worker (docs/queue.md §10): it stops at once without completing, failing or
releasing anything (exit 4).

    python -m common.workers.worker --config CFG --gpu 0 --home STAGE --workers 4 --parent PID --log [--fenced]
"""
import argparse
import ctypes
import os
import signal
import sys
import time
import traceback

from common.config import ConfigError, RunConfig, load_config
from common.graph import build_graph
from common.jobqueue import crash
from common.jobqueue.job import CorruptJob
from common.jobqueue.lease import Fenced, Lease, make_wid
from common.jobqueue.queue import Queue
from common.workers.scheduling import BurstPolicy, Pair, choose_stage
from common.stage import DeviceError

PR_SET_PDEATHSIG = 1
EXIT_FENCED = 4


class Stop(BaseException):
    """Raised from beat() when the worker must stop; BaseException so a stage's `except Exception`
    cannot swallow it."""


def log(msg: str):
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


class Worker:
    def __init__(self, config: RunConfig, gpu="cpu", home="both", n_workers=1, parent=None, wid=None, graph=None,
                 fenced=False):
        self.config, self.n_workers, self.parent = config, n_workers, parent
        self.graph = graph or build_graph(config)
        qc = config.queue
        self.q = Queue(config.queue_dir, self.graph.rules(), fsync=qc.fsync)
        self.wid = wid or make_wid(gpu)
        self.device = "cpu" if str(gpu) == "cpu" else "cuda"
        ttls = (qc.ttl_loading_s, qc.ttl_working_s) if fenced else ()
        self.lease = Lease(self.q.layout.lease_path(self.wid), gpu, home, qc.heartbeat_s, qc.fsync, *ttls)
        self.claimers = {s: self.q.claimer(s, self.wid) for s in self.graph.stages}
        self.pair = Pair(*self.graph.flow())
        self.first = [s for s in self.graph.stages if s not in self.pair]
        self.home = home  # a stage of the pair, or "both"
        # scheduling.burst counts upstream jobs; the policy counts decisions, each a batch of them
        images = config.scheduling.burst if self.device != "cpu" else 1
        self.policy = BurstPolicy(self.pair, -(-images // self.graph.spec(self.pair.up).batch)) if home == "both" else None
        self.stages, self.current, self.last_group, self.warm = {}, None, {}, set()
        self.backoff = {"backoff_base": qc.backoff_base_s, "backoff_max": qc.backoff_max_s}
        self.idle_cap = min(2.0, max(0.2, 5 * qc.heartbeat_s))
        self.stopping = False

    def request_stop(self, *_):
        self.stopping = True

    def beat(self, phase: str, job: str = None):
        """The stage's heartbeat: renew the lease, or raise Stop if asked to stop or orphaned."""
        if self.parent and os.getppid() != self.parent:
            self.stopping = True
        if self.stopping:
            raise Stop()
        self.lease.beat(phase, job)

    def built(self, stage: str):
        """The stage's object, built (its model loaded) once per process."""
        if stage not in self.stages:
            self.lease.beat("loading", force=True)
            log(f"loading {stage} stage {self.graph.spec(stage).impl} on {self.device}")
            self.stages[stage] = self.graph.stage_class(stage)(self.config, self.device)
        return self.stages[stage]

    def pick(self):
        for s in self.first:
            if self.claimers[s].has_work():
                return s
        backlog = self.q.count_pending(self.pair.down)
        up_left, down_left = self.claimers[self.pair.up].has_work(), backlog > 0
        if self.policy is not None:
            return self.policy.next_stage(backlog, up_left, down_left)
        return choose_stage(self.pair, self.home, self.current, backlog, up_left, down_left, self.n_workers)

    def claim(self, stage: str) -> list:
        """A batch of the stage's jobs whose records are ours: a job planned under other settings, or
        whose fields do not make a task, is quarantined (a queue folder is not trusted)."""
        jobs = []
        for job in self.claimers[stage].claim(self.graph.spec(stage).batch, self.last_group.get(stage)):
            path = self.q.layout.claimed_dir(stage, self.wid) / f"{job.id}.json"
            try:
                if job.plan != self.graph.plan:
                    raise CorruptJob(f"{path}: planned under other settings ({job.plan}, this run "
                                     f"{self.graph.plan}); not run")
                self.graph.task_to_run(job)
            except CorruptJob as e:
                log(f"quarantined {path}: {e}")
                self.q.quarantine(stage, path, str(e))
                continue
            jobs.append(job)
        return sorted(jobs, key=lambda j: j.id)  # a batch's order is its ids', not the claim race's

    def run(self) -> int:
        """Work until no job is left in flight (0) or a stop is requested (0)."""
        idle = 0.2
        try:
            self.lease.beat("loading", force=True)
            while not self.stopping:
                self.lease.check()  # stopped past the TTL between batches: fenced before it claims or exits
                stage = self.pick()
                jobs = []
                if stage is not None:
                    self.built(stage)
                    if self.stopping:
                        break
                    jobs = self.claim(stage)
                if jobs:
                    idle = 0.2
                    self.run_batch(stage, jobs)
                    continue
                if not self.q.in_flight():
                    log("no job left; exiting")
                    return 0
                for s in self.graph.stages:
                    self.q.promote_due(s)
                self._sleep(idle)
                idle = min(idle * 1.5, self.idle_cap)
                self.beat("idle")
        except Stop:
            pass
        log("stopped")
        return 0

    def _sleep(self, seconds: float):
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.05, seconds))

    def run_batch(self, stage: str, jobs: list):
        self.current = stage
        tasks = [self.graph.task(j) for j in jobs]
        log(f"{stage} {len(jobs)} job(s) of {jobs[0].group}: {[j.id for j in jobs]}")
        t0 = time.monotonic()
        error = None
        # The first batch of a stage compiles Jittor's kernels: it runs under the loading TTL.
        phase_of = (lambda phase: phase) if stage in self.warm else (lambda phase: "loading")
        try:
            self.beat(phase_of("working"), jobs[0].id)
            self.built(stage).run(tasks, lambda phase: self.beat(phase_of(phase)))
        except Stop:
            self.stopping = True
        except Exception:
            error = traceback.format_exc()
            log(f"{stage} batch failed:\n{error}")
        finally:
            self.lease.info["busy_s"] += time.monotonic() - t0
        crash.point("after_stage")
        self.lease.check()  # silent past the TTL inside the stage: the jobs may be another worker's now
        rules = self.q.rules[stage]
        for job in jobs:
            if rules.done(job):
                if self.q.complete(self.wid, job):
                    self.lease.info["jobs_done"] += 1
                else:
                    log(f"{stage} {job.id}: claim taken away or completed elsewhere; not counted")
            elif self.stopping and error is None:
                self.q.release(self.wid, job)
            else:
                text = error or f"stage returned without writing the outputs of {job.id}"
                where = self.q.fail(self.wid, job, "exception" if error else "missing_output", text,
                                    isolate=len(jobs) > 1, **self.backoff)
                log(f"{stage} {job.id} -> {where}")
        self.last_group[stage] = jobs[0].group
        if error is None:
            self.warm.add(stage)
        self.lease.beat("idle", force=True)


def _set_pdeathsig():
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.workers.worker", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None)
    p.add_argument("--gpu", default="cpu")
    p.add_argument("--home", default="both", help="the stage it prefers (its home stage), or 'both'")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--parent", type=int, default=None, help="launcher pid: exit when it is gone")
    p.add_argument("--log", action="store_true", help="write stdout/stderr to queue_dir/logs/<wid>.log")
    p.add_argument("--fenced", action="store_true",
                   help="on a cluster: stop without touching the queue once the lease has been silent past its TTL")
    args = p.parse_args(argv)
    _set_pdeathsig()
    if args.parent and os.getppid() != args.parent:
        return 0  # the launcher died before we could arm the death signal
    try:
        config = load_config(args.config)
        worker = Worker(config, args.gpu, args.home, args.workers, args.parent, fenced=args.fenced)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.log:
        worker.q.layout.logs.mkdir(parents=True, exist_ok=True)
        fd = os.open(worker.q.layout.log_path(worker.wid), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    log(f"worker {worker.wid} home={args.home} device={worker.device} pid={os.getpid()}")
    try:
        code = worker.run()
    except DeviceError as e:  # exit 3: the supervisor parks this GPU slot, the others go on
        log(f"error: {e}")
        code = 3
    except Fenced as e:
        log(f"fenced: {e}; stopping without touching the queue")
        code = EXIT_FENCED
    except Exception:
        log(f"worker crashed:\n{traceback.format_exc()}")
        code = 1
    worker.lease.exited(code, orphaned=bool(args.parent) and os.getppid() != args.parent)
    return code


if __name__ == "__main__":
    sys.exit(main())
