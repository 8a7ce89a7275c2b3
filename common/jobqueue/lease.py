"""Worker identity and lease (docs/queue.md §3): the worker rewrites workers/<wid>.json as it makes progress;
the launcher reads it to find hung workers, and uses (host, boot_id, pid start time) to prove death.

Progress drives the beat, not a timer thread, so a worker stuck inside a kernel goes silent.
"""
import json
import os
import socket
import time
from pathlib import Path

from common.atomic import write_bytes

HOST = socket.gethostname()


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


def alive(info: dict) -> bool:
    """Whether the process a lease names still runs (same host, same boot, same process start)."""
    if info.get("host") != HOST or info.get("boot_id") != boot_id():
        return False
    return proc_start(int(info["pid"])) == info.get("start")


def read(path) -> dict:
    try:
        info = json.loads(Path(path).read_bytes())
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


class Lease:
    """The worker side: `beat(phase)` rewrites the lease at most every `every` seconds (or on a phase
    change); `busy` accumulates seconds spent in stages, for the launcher's busy fraction."""

    def __init__(self, path: Path, gpu, role: str, every: float, fsync: bool):
        self.path, self.every, self.fsync = Path(path), every, fsync
        pid = os.getpid()
        self.info = {"wid": self.path.stem, "pid": pid, "host": HOST, "boot_id": boot_id(),
                     "start": proc_start(pid), "gpu": gpu, "role": role, "job": None, "phase": "loading",
                     "beat_at": 0.0, "busy_s": 0.0, "jobs_done": 0}
        self._written = 0.0

    def beat(self, phase: str, job: str = None, force: bool = False):
        now = time.time()
        changed = phase != self.info["phase"] or (job is not None and job != self.info["job"])
        if job is not None:
            self.info["job"] = job
        self.info["phase"] = phase
        if force or changed or now - self._written >= self.every:
            self.info["beat_at"] = now
            write_bytes(self.path, json.dumps(self.info).encode(), fsync=self.fsync)
            self._written = now
