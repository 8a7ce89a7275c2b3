"""Worker identity and lease (docs/queue.md §3, §9): the worker rewrites workers/<wid>.json as it makes
progress; the launcher watches it to find hung workers.

- Progress drives the beat, not a timer thread, so a worker stuck inside a kernel goes silent.
- The launcher times a lease by when it last saw it *change*, on its own monotonic clock (`Watch`), so no
  clock of another host is ever compared with its own.
- (host, boot id, process start time) proves a worker dead on the host that reads it. On a cluster the
  launcher may instead give a silent worker's jobs away once its TTL has passed, so a worker silent for
  longer than its TTL is fenced: its next renewal raises `Fenced` and it stops without touching the queue.
"""
import json
import os
import socket
import time
from pathlib import Path

from common.jobqueue.atomic import write_bytes

HOST = socket.gethostname()
NODE_ENV = "JSTYLEID_NODE"  # set by a cluster slot: the node a worker runs on, for status and logs


class Fenced(BaseException):
    """The lease went unrenewed past its TTL: the jobs may be another worker's by now, so nothing more may
    be written, completed or released. BaseException so a stage's `except Exception` cannot swallow it."""


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def proc_start(pid: int):
    """The kernel's start time of `pid` (clock ticks since boot), or None if it is gone (or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def make_wid(gpu, pid: int = None) -> str:
    return f"{HOST}-g{gpu}-{os.getpid() if pid is None else pid}"


WORKER_MODULE = "common.workers.worker"  # the program a lease may name: named here, never imported


def runs_worker(pid: int) -> bool:
    """Whether `pid` runs our worker module: a lease is a file anyone with write access to the queue folder
    could forge, and the launcher signals what a live lease names (docs/queue.md §9)."""
    try:
        return WORKER_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def alive(info: dict) -> bool:
    """Whether the worker a lease names still runs (same host, same boot, same process start, and a worker)."""
    if info.get("host") != HOST or info.get("boot_id") != boot_id():
        return False
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    return proc_start(pid) == info.get("start") and runs_worker(pid)


def ttl_of(phase: str, loading: float, working: float) -> float:
    """The TTL a lease in `phase` runs under (loading includes the first compile)."""
    return loading if phase == "loading" else working


def read(path) -> dict:
    try:
        info = json.loads(Path(path).read_bytes())
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


class Lease:
    """The worker side: `beat(phase)` rewrites the lease at most every `every` seconds (or on a phase
    change); `busy` accumulates seconds spent in stages, for the launcher's busy fraction. With TTLs
    given, a renewal after a silence longer than the TTL raises Fenced (measured on this process's own
    monotonic clock, so it holds whatever the other hosts' clocks say)."""

    def __init__(self, path: Path, gpu, home: str, every: float, fsync: bool, ttl_loading: float = None,
                 ttl_working: float = None):
        self.path, self.every, self.fsync = Path(path), every, fsync
        self.ttl = (ttl_loading, ttl_working) if ttl_loading and ttl_working else None
        pid = os.getpid()
        self.info = {"wid": self.path.stem, "pid": pid, "host": HOST, "node": os.environ.get(NODE_ENV) or HOST,
                     "boot_id": boot_id(), "start": proc_start(pid), "gpu": gpu, "home": home, "job": None,
                     "phase": "loading", "beat_at": 0.0, "seq": 0, "busy_s": 0.0, "jobs_done": 0}
        self._written = time.monotonic()

    def check(self):
        """Raise Fenced if the lease has gone unrenewed for longer than its phase's TTL."""
        if self.ttl is None:
            return
        silent, ttl = time.monotonic() - self._written, ttl_of(self.info["phase"], *self.ttl)
        if silent > ttl:
            raise Fenced(f"lease {self.path.name} unrenewed for {silent:.1f} s (TTL {ttl:g} s): its jobs may "
                         f"have been given to another worker")

    def beat(self, phase: str, job: str = None, force: bool = False):
        self.check()
        now = time.monotonic()
        changed = phase != self.info["phase"] or (job is not None and job != self.info["job"])
        if job is not None:
            self.info["job"] = job
        self.info["phase"] = phase
        if force or changed or now - self._written >= self.every:
            self._write()

    def exited(self, code: int, orphaned: bool):
        """The last record: the exit status, and whether the parent had died (a cluster slot that lost its
        actor restarts even after a clean exit). Written even when fenced: it claims nothing."""
        self.info.update(phase="exited", exit=code, orphaned=orphaned)
        self._write()

    def _write(self):
        self.info["beat_at"] = time.time()
        self.info["seq"] += 1
        write_bytes(self.path, json.dumps(self.info).encode(), fsync=self.fsync)
        self._written = time.monotonic()


class Watch:
    """The launcher's view of one lease: how long since it last changed, on the launcher's own monotonic
    clock (a renewal is seen when it becomes visible here, never earlier, so the silence is not
    underestimated). Starts counting when created: a lease not yet written is silent since the spawn."""

    def __init__(self, path: Path):
        self.path, self.token, self.since, self.info = Path(path), None, time.monotonic(), {}

    def poll(self) -> dict:
        """Read the lease (the last one read stays in `info`)."""
        self.info = read(self.path) or {}
        token = (self.info.get("seq"), self.info.get("beat_at"), self.info.get("phase"))
        if self.info and token != self.token:
            self.token, self.since = token, time.monotonic()
        return self.info

    def silent_for(self) -> float:
        return time.monotonic() - self.since


def table(folder: Path) -> list:
    """One line per lease in `folder` (status): worker, node, device, home stage, phase, jobs done, beat age.
    The age compares the worker host's clock with this one's: for reading, not for deciding."""
    lines = []
    for path in sorted(Path(folder).glob("*.json")):
        info = read(path)
        if not info:
            continue
        age = time.time() - info["beat_at"] if isinstance(info.get("beat_at"), (int, float)) else None
        lines.append(f"  {info.get('wid', path.stem)} on {info.get('node') or info.get('host')}: "
                     f"gpu {info.get('gpu')}, home {info.get('home')}, {info.get('phase')}"
                     + (f" ({info['job']})" if info.get("job") and info.get("phase") != "exited" else "")
                     + f", {info.get('jobs_done', 0)} job(s)" + (f", beat {age:.0f} s ago" if age is not None else ""))
    return lines
