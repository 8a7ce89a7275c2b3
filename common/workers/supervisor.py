"""The launcher's process manager (docs/queue.md §6): one worker process per slot, restarted with backoff.

- Workers are exec'd (`python -m common.workers.worker`) in their own session, CUDA_VISIBLE_DEVICES
  pinned; they die with the launcher via PR_SET_PDEATHSIG.
- Exit 0 means no work left: no restart. Any other exit: reclaim its jobs (waitpid proved the death),
  restart after min(base * 2^k, 60) s with jitter; exit 3 or 5 failures in 10 minutes park the slot.
- A worker whose lease is older than its TTL is hung: SIGTERM, grace, SIGKILL, reap, reclaim (counted).
- First SIGINT/SIGTERM: stop restarting, SIGTERM every worker (they release their jobs and exit 0),
  SIGKILL stragglers after stop_grace_s. A second signal SIGKILLs everything at once.
- How a slot's process is started is pluggable (`start_worker`): here a child process, on a cluster a Ray
  actor that runs the same command on its node (common/workers/ray_slots.py, docs/queue.md §10). Either
  returns a handle like subprocess.Popen's (poll, send_signal, terminate, kill) that also names its
  worker (`wid`, `node`): a cluster worker names itself once it is placed (`placed`), and its lease is
  watched from then on.
"""
import os
import random
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from common.config import RunConfig
from common.jobqueue import lease
from common.jobqueue.lease import make_wid
from common.jobqueue.queue import Queue

REPO = Path(__file__).resolve().parents[2]
FAILURE_WINDOW_S = 600.0
MAX_FAILURES = 5
EXIT_NO_DEVICE = 3
EXIT_LOST = 70  # a cluster slot's actor or node died; its worker is gone (its lease says so, or expired)


@dataclass
class Slot:
    gpu: str
    home: str
    proc: subprocess.Popen = None  # or a cluster handle with the same methods
    wid: str = None
    node: str = None  # where the worker runs, when not here
    watch: lease.Watch = None  # the lease's last change, on this process's clock
    started: float = 0.0
    term_at: float = None  # when a hung worker got SIGTERM
    hung: bool = False
    restart_at: float = 0.0  # spawn when time passes this (0: now)
    done: bool = False  # exited 0: nothing left for it
    parked: str = None  # why the slot gave up
    no_device: bool = False  # parked because its device is unusable (exit 3)
    failures: deque = field(default_factory=deque)
    busy_s: float = 0.0
    jobs_done: int = 0


def last_line(log: Path, limit: int = 300) -> str:
    """The last non-empty line of a worker's log (a traceback's last line is the error), shortened."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


class LocalWorker(subprocess.Popen):
    """A worker process on this host; its wid is known at once."""
    node, placed = None, True

    def __init__(self, slot: "Slot", cmd: list, env: dict):
        super().__init__(cmd, env=env, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.wid = make_wid(slot.gpu, self.pid)


def describe_exit(rc: int) -> str:
    if rc == EXIT_LOST:
        return "lost with its actor or node (seen by Ray; its lease says it exited, or expired)"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


class Supervisor:
    def __init__(self, config: RunConfig, config_path, slots: list, queue: Queue, log=print, on_tick=None,
                 start_worker=LocalWorker):
        self.config, self.config_path, self.q = config, config_path, queue
        self.start_worker = start_worker  # (slot, cmd, env) -> a handle like Popen's
        self.slots = [Slot(str(g), r) for g, r in slots]
        self.log, self.on_tick = log, on_tick or (lambda: None)
        self.signals = 0
        self.signal_code = 0
        self.stop_deadline = None
        self.tick = min(0.2, config.queue.heartbeat_s)
        qc = config.queue
        self.backoff = {"backoff_base": qc.backoff_base_s, "backoff_max": qc.backoff_max_s}

    # -- signals --------------------------------------------------------------------------------------
    def handle_signal(self, signum, _frame):
        self.signals += 1
        self.signal_code = 128 + signum
        if self.signals == 1:
            self.log("stopping: workers release their jobs (press Ctrl-C again to kill them now)")
            self.stop_deadline = time.monotonic() + self.config.queue.stop_grace_s
            self._signal_all(signal.SIGTERM)
        else:
            self._signal_all(signal.SIGKILL)

    def abort(self, code: int, why: str):
        """Stop as a first Ctrl-C would (workers release their jobs), ending the run with `code`."""
        self.log(why)
        if not self.stopping:
            self.signals, self.signal_code = 1, code
            self.stop_deadline = time.monotonic() + self.config.queue.stop_grace_s
            self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig):
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                try:
                    slot.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    @property
    def stopping(self) -> bool:
        return self.signals > 0

    # -- processes ------------------------------------------------------------------------------------
    def spawn(self, slot: Slot):
        cmd = [sys.executable, "-m", "common.workers.worker", "--gpu", slot.gpu, "--home", slot.home,
               "--workers", str(len(self.slots)), "--parent", str(os.getpid()), "--log"]
        if self.config_path:
            cmd += ["--config", str(self.config_path)]
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="" if slot.gpu == "cpu" else slot.gpu,
                   PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        slot.proc = self.start_worker(slot, cmd, env)
        slot.started, slot.term_at, slot.hung, slot.done = time.time(), None, False, False
        self._named(slot)

    def _named(self, slot: Slot):
        """Follow the handle's worker id (a cluster worker names itself once placed): a new one gets a new
        lease watch, which counts its silence from now."""
        if slot.watch is None or slot.proc.wid != slot.wid:
            slot.wid, slot.node = slot.proc.wid, slot.proc.node
            slot.watch = lease.Watch(self.q.layout.lease_path(slot.wid))

    def _check_lease(self, slot: Slot, now: float):
        qc = self.config.queue
        if slot.term_at is not None:
            if now - slot.term_at > qc.kill_grace_s:
                slot.proc.kill()
            return
        info = slot.watch.poll()
        phase = info.get("phase", "loading")
        ttl = lease.ttl_of(phase, qc.ttl_loading_s, qc.ttl_working_s)
        silent = slot.watch.silent_for()  # not beat_at: that is the worker host's clock
        if silent > ttl:
            self.log(f"worker {slot.wid} hung: no lease renewal for {silent:.1f} s (phase {phase}, "
                     f"TTL {ttl:g} s); terminating")
            slot.hung, slot.term_at = True, now
            slot.proc.terminate()

    def _reap(self, slot: Slot, rc: int, now: float):
        info = lease.read(self.q.layout.lease_path(slot.wid)) or {}
        slot.busy_s += info.get("busy_s", 0.0)
        slot.jobs_done += info.get("jobs_done", 0)
        crashed = rc != 0 or slot.hung
        reason = f"worker {slot.wid} " + ("hung (lease expired) and was killed" if slot.hung else describe_exit(rc))
        counted = crashed and not self.stopping
        try:
            for stage, jid, outcome in self.q.reclaim(slot.wid, counted=counted, reason=reason, **self.backoff):
                self.log(f"reclaimed {stage} {jid} from {slot.wid}: {outcome}")
        except OSError as e:  # e.g. a full disk: its jobs stay claimed; the next launch reclaims them
            self.abort(2, f"cannot reclaim the jobs of {slot.wid} ({e.filename or 'queue'}: {e.strerror or e}); "
                          "stopping: free space and rerun the same command, which reclaims them")
        try:
            self.q.layout.lease_path(slot.wid).unlink()
        except FileNotFoundError:
            pass
        slot.proc, slot.watch = None, None
        if not crashed:
            slot.done = True
            return
        error = last_line(self.q.layout.log_path(slot.wid)) if rc != 0 and not slot.hung else ""
        self.log(f"{reason}" + (f"; its log ends: {error}" if error else ""))
        if self.stopping:
            return
        slot.failures.append(now)
        while slot.failures and now - slot.failures[0] > FAILURE_WINDOW_S:
            slot.failures.popleft()
        if rc == EXIT_NO_DEVICE or len(slot.failures) >= MAX_FAILURES:
            slot.no_device = rc == EXIT_NO_DEVICE
            slot.parked = "device unusable (exit 3)" if slot.no_device else \
                f"{len(slot.failures)} failures in {FAILURE_WINDOW_S:.0f} s"
            self.log(f"slot gpu={slot.gpu} parked: {slot.parked}; see {self.q.layout.log_path(slot.wid)}")
            return
        delay = min(self.config.queue.restart_base_s * 2 ** (len(slot.failures) - 1), 60.0)
        slot.restart_at = now + delay * random.uniform(0.8, 1.2)

    def warm_up(self):
        """Several workers would start on a cold kernel cache at once: first one process fills it
        (common.workers.warmup). None to go on, else the exit code (a signal, or the warm-up failed: no job run)."""
        if len(self.slots) < 2 or self.start_worker is not LocalWorker:
            return None  # one worker warms its own cache; a cluster's nodes each have theirs, not this host's
        from common.workers.warmup import EXIT_NO_DEVICE as WARM_NO_DEVICE, WarmUp
        gpu = self.slots[0].gpu
        self.log(f"warming the kernel cache on gpu {gpu} before starting {len(self.slots)} workers")
        warm = WarmUp(self.config, self.config_path, gpu, self.q.layout.logs / "warmup.log", REPO)
        while (rc := warm.poll()) is None:
            if self.stopping:
                warm.stop(signal.SIGKILL if self.signals > 1 else signal.SIGTERM)
            time.sleep(self.tick)
        if self.stopping:
            return self.signal_code
        if rc == 0:
            return None
        self.log(f"warm-up on gpu {gpu} failed ({describe_exit(rc)}): {warm.last_line()}; no job was run; "
                 f"see {warm.log_path}")
        return EXIT_NO_DEVICE if rc == WARM_NO_DEVICE else 1

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> int:
        """Supervise until no work is left (0), every slot is parked (3 or 1), or a stop (130/143)."""
        old = {s: signal.signal(s, self.handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        last_promote = 0.0
        try:
            code = self.warm_up()
            if code is not None:
                return code
            for slot in self.slots:
                self.spawn(slot)
            while True:
                now = time.time()
                for slot in self.slots:
                    if slot.proc is not None:
                        rc = slot.proc.poll()
                        self._named(slot)
                        if rc is None:
                            if not self.stopping and slot.proc.placed:
                                self._check_lease(slot, now)
                            continue
                        self._reap(slot, rc, now)
                    elif not (self.stopping or slot.parked or slot.done) and now >= slot.restart_at:
                        self.spawn(slot)
                if self.stopping:
                    if self.stop_deadline and time.monotonic() > self.stop_deadline:
                        self._signal_all(signal.SIGKILL)
                    if all(s.proc is None for s in self.slots):
                        return self.signal_code
                elif all(s.proc is None and (s.done or s.parked) for s in self.slots):
                    if not self.q.in_flight():
                        return 0
                    usable = [s for s in self.slots if not s.parked]
                    if not usable:
                        return EXIT_NO_DEVICE if all(s.no_device for s in self.slots) else 1
                    for s in usable:  # work came back (a reclaim, a retry): wake the idle slots
                        s.done = False
                if now - last_promote > 1.0:
                    for stage in self.q.stages:
                        self.q.promote_due(stage)
                    self.q.sweep_blocked()
                    last_promote = now
                self.on_tick()
                time.sleep(self.tick)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
