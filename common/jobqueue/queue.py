"""Queue operations (QUEUE.md §3). Each state change is one `link` or `rename`, the commit point; a job is
updated in place (tmp/ + os.replace) before it moves, never copied and deleted.

- enqueue: write tmp, **link** into pending (EEXIST: already queued).
- claim: **rename** pending -> claimed/<wid>; ENOENT means another worker won, try the next entry.
- complete: outputs are in place (checked), gen publishes the sty job, **rename** claimed -> done.
- fail / reclaim: update in place (attempts + 1, the error), **rename** to retry, failed or pending.
- release (shutdown): **rename** claimed -> pending.

`attempts` counts failed attempts (a crash or hang of the owner counts, a release does not), so the hot
path, claim and complete, is one rename each and writes no record: on ext4 a rename over an existing file
flushes its data (auto_da_alloc), about 1 ms, which would dominate the queue's cost. The owner is the
claimed/<wid>/ folder; claim and finish times are the files' ctimes (a rename sets it).
"""
import ctypes
import os
import random
import time
import uuid
import zlib
from glob import escape as glob_escape
from pathlib import Path

import numpy as np

from common.atomic import png_is_complete
from common.jobqueue import crash
from common.jobqueue.jobs import CorruptJob, add_error, dumps, read_job
from common.jobqueue.layout import STAGES, Layout

REFRESH_S = 0.5  # an empty stage's folders are re-listed at most this often by has_work()
PEEK = 8  # a claim picks at random among the first PEEK entries of a shard, to spread racing workers


def outputs_ok(stage: str, job: dict) -> bool:
    """The stage's outputs exist and are complete: the truth that a job is done."""
    if stage == "sty":
        return png_is_complete(job["out"])
    if not png_is_complete(job["content_png"]):
        return False
    try:
        np.load(job["content_latent"], mmap_mode="r")  # header parses and the file holds all the data
        return True
    except (OSError, ValueError):
        return False


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_SYMLINK_FOLLOW = -100, 0x400


def _link_fd(fd: int, dst: Path):
    """Give an O_TMPFILE a name (os.link would not follow /proc/self/fd/N). Raises FileExistsError."""
    if _libc.linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD, os.fsencode(dst), AT_SYMLINK_FOLLOW):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(dst))


def drop_temp_files(job: dict):
    """Delete the half-written temp files (common.atomic names them .<target>.*.tmp) a dead owner left."""
    for target in (job["out"], job["content_png"], job["content_latent"]):
        target = Path(target)
        for tmp in target.parent.glob(f".{glob_escape(target.name)}.*.tmp"):
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass


def _files(folder: Path):
    """Lazily the *.json entries of a folder (none if it does not exist)."""
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.endswith(".json"):
                    yield e
    except FileNotFoundError:
        return


def _subdirs(folder: Path):
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if e.is_dir())
    except FileNotFoundError:
        return []


class Queue:
    def __init__(self, root, fsync: bool = True):
        self.layout = Layout(root)
        self.fsync = fsync
        self._made = set()

    # -- primitives -----------------------------------------------------------------------------------
    def _mkdir(self, d: Path):
        if d not in self._made:
            d.mkdir(parents=True, exist_ok=True)
            self._made.add(d)

    def _sync_dir(self, d: Path):
        if self.fsync:
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _write_tmp(self, job: dict) -> Path:
        self._mkdir(self.layout.tmp)
        tmp = self.layout.tmp / f"{job['id']}.{os.getpid()}.{uuid.uuid4().hex[:8]}.json"
        with open(tmp, "wb") as f:
            f.write(dumps(job))
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        return tmp

    def rewrite(self, path: Path, job: dict):
        """Update a job in place: the reader sees the old record or the new one."""
        os.replace(self._write_tmp(job), path)

    def move(self, src: Path, dst: Path):
        self._mkdir(dst.parent)
        os.rename(src, dst)
        self._sync_dir(dst.parent)

    def pending_path(self, job: dict) -> Path:
        return self.layout.pending_dir(job["stage"], job["style"], job["id"]) / f"{job['id']}.json"

    # -- operations -----------------------------------------------------------------------------------
    def enqueue(self, job: dict) -> bool:
        """Publish a new job into pending; False if it was already there.

        The record is written to an unnamed O_TMPFILE in tmp/ (nothing is left behind by a crash) and
        linked into pending/; a named temp file is the fallback where O_TMPFILE is not supported."""
        dst = self.pending_path(job)
        self._mkdir(dst.parent)
        try:
            fd = os.open(self.layout.tmp, os.O_TMPFILE | os.O_WRONLY, 0o644)
        except (AttributeError, OSError):
            fd = None
        if fd is None:
            tmp = self._write_tmp(job)
            try:
                os.link(tmp, dst)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        else:
            try:
                os.write(fd, dumps(job))
                if self.fsync:
                    os.fsync(fd)
                _link_fd(fd, dst)
            except FileExistsError:
                return False
            finally:
                os.close(fd)
        self._sync_dir(dst.parent)
        return True

    def claimer(self, stage: str, wid: str) -> "Claimer":
        return Claimer(self, stage, wid)

    def complete(self, stage: str, wid: str, job: dict):
        """Mark a job done (its outputs were checked); gen first publishes the sty job."""
        path = self.layout.claimed_dir(stage, wid) / f"{job['id']}.json"
        if stage == "gen" and not self._sty_exists(job):
            self.enqueue(dict(job, stage="sty", attempts=0, errors=[], owner=None, not_before=None,
                              solo=False, created_at=time.time()))
            crash.point("after_publish")
        crash.point("before_done")
        self.move(path, self.layout.done_path(stage, job["id"]))
        if stage == "sty":
            try:
                os.unlink(job["content_latent"])  # the hand-off is spent; the content PNG stays
            except FileNotFoundError:
                pass

    def _sty_exists(self, job: dict) -> bool:
        """Whether the sty job was published already (a gen job reclaimed after its publish step).

        States are checked in the order jobs flow (pending, claimed, retry, done), so a job moving
        on meanwhile is still seen; the final enqueue's EEXIST covers a retry moving back to pending."""
        jid, lay = job["id"], self.layout
        if self.pending_path(dict(job, stage="sty")).exists():
            return True
        claimed = lay.state_dir("sty", "claimed")
        if any((claimed / w / f"{jid}.json").exists() for w in _subdirs(claimed)):
            return True
        return any(p.exists() for p in (lay.retry_path("sty", jid), lay.done_path("sty", jid),
                                        lay.failed_path("sty", jid))) or png_is_complete(job["out"])

    def fail(self, stage: str, wid: str, job: dict, kind: str, text: str, *, isolate: bool = False,
             backoff_base: float = 30.0, backoff_max: float = 600.0):
        """Count a failed attempt and record its error; retry after a backoff, or dead-letter at max.

        `isolate`: the job failed inside a batch, so the fault may be another job's: the attempt is not
        counted and the job runs alone next time (a poison job then exhausts only its own attempts).
        """
        path = self.layout.claimed_dir(stage, wid) / f"{job['id']}.json"
        add_error(job, wid, kind, text)
        if isolate:
            job.update(solo=True, owner=None)
            self.rewrite(path, job)
            self.move(path, self.pending_path(job))
            return "pending"
        job["attempts"] += 1
        if job["attempts"] >= job["max_attempts"]:
            self.rewrite(path, job)
            self.move(path, self.layout.failed_path(stage, job["id"]))
            return "failed"
        delay = min(backoff_base * 2 ** (job["attempts"] - 1), backoff_max) * random.uniform(0.8, 1.2)
        job.update(not_before=time.time() + delay, owner=None)
        self.rewrite(path, job)
        if delay <= 0:
            self.move(path, self.pending_path(job))
            return "pending"
        self.move(path, self.layout.retry_path(stage, job["id"]))
        return "retry"

    def release(self, stage: str, wid: str, job: dict):
        """Give a claimed job back unrun (shutdown): the attempt does not count."""
        self.move(self.layout.claimed_dir(stage, wid) / f"{job['id']}.json", self.pending_path(job))

    def reclaim(self, wid: str, counted: bool, reason: str, **backoff) -> list:
        """Recover the jobs of a worker known to be dead. Launcher only.

        A job whose outputs are in place is completed; otherwise it goes back (counted: an attempt
        spent, else returned as unrun). Returns [(stage, id, outcome)]."""
        outcomes = []
        pid = wid.rsplit("-", 1)[-1]
        if pid.isdigit():  # its half-written queue records (tmp/<id>.<pid>.<rand>.json)
            for tmp in self.layout.tmp.glob(f"*.{pid}.*.json"):
                tmp.unlink()
        for stage in STAGES:
            folder = self.layout.claimed_dir(stage, wid)
            entries = list(_files(folder))
            for e in entries:
                try:
                    job = read_job(e.path)
                except CorruptJob as err:
                    outcomes.append((stage, Path(e.path).stem, self.quarantine(stage, Path(e.path), str(err))))
                    continue
                drop_temp_files(job)
                if outputs_ok(stage, job):
                    self.complete(stage, wid, job)
                    outcomes.append((stage, job["id"], "done"))
                elif counted:
                    outcomes.append((stage, job["id"], self.fail(stage, wid, job, "exit", reason,
                                                                 isolate=len(entries) > 1, **backoff)))
                else:
                    self.rewrite(Path(e.path), add_error(job, wid, "released", reason))
                    self.release(stage, wid, job)
                    outcomes.append((stage, job["id"], "pending"))
            try:
                folder.rmdir()
            except OSError:
                pass
        return outcomes

    def quarantine(self, stage: str, path: Path, why: str) -> str:
        """Move a corrupt job file aside (failed/corrupt/); the planner queues its task again."""
        dst = self.layout.corrupt_dir(stage) / f"{path.name}.{uuid.uuid4().hex[:6]}"
        self._mkdir(dst.parent)
        try:
            os.rename(path, dst)
        except FileNotFoundError:  # another process quarantined it first
            return "corrupt"
        dst.with_suffix(dst.suffix + ".why").write_text(why + "\n")
        return "corrupt"

    def promote_due(self, stage: str, now: float = None) -> int:
        """Move retry jobs whose backoff has passed back to pending (any process may; one rename wins)."""
        now = time.time() if now is None else now
        moved = 0
        for e in list(_files(self.layout.state_dir(stage, "retry"))):
            try:
                job = read_job(e.path)
            except FileNotFoundError:
                continue
            except CorruptJob as err:
                self.quarantine(stage, Path(e.path), str(err))
                continue
            if (job.get("not_before") or 0) <= now:
                try:
                    self.move(Path(e.path), self.pending_path(job))
                    moved += 1
                except FileNotFoundError:
                    pass
        return moved

    # -- counting -------------------------------------------------------------------------------------
    def pending_dirs(self, stage: str) -> list:
        root = self.layout.state_dir(stage, "pending")
        styles = _subdirs(root)
        if stage == "sty":
            return [root / s for s in styles]
        return [root / s / hh for s in styles for hh in _subdirs(root / s)]

    def backlog(self) -> int:
        """Pending sty jobs: the back-pressure signal (bounded, so counting is cheap)."""
        return sum(1 for d in self.pending_dirs("sty") for _ in _files(d))

    def has_pending(self, stage: str) -> bool:
        return any(next(_files(d), None) is not None for d in self.pending_dirs(stage))

    def in_flight(self) -> bool:
        """Any job not yet done or failed, in either stage (pending, retry or claimed)."""
        for stage in STAGES:
            if self.has_pending(stage) or next(_files(self.layout.state_dir(stage, "retry")), None):
                return True
            claimed = self.layout.state_dir(stage, "claimed")
            if any(next(_files(claimed / w), None) for w in _subdirs(claimed)):
                return True
        return False

    def scan(self, stage: str) -> dict:
        """{state: {id: path}} for every job file of a stage. O(N): startup, status and tests only."""
        out = {}
        root = self.layout.root / stage
        out["pending"] = {Path(e.path).stem: Path(e.path) for d in self.pending_dirs(stage) for e in _files(d)}
        out["claimed"] = {Path(e.path).stem: Path(e.path) for w in _subdirs(root / "claimed")
                          for e in _files(root / "claimed" / w)}
        out["retry"] = {Path(e.path).stem: Path(e.path) for e in _files(root / "retry")}
        out["done"] = {Path(e.path).stem: Path(e.path) for hh in _subdirs(root / "done")
                       for e in _files(root / "done" / hh)}
        out["failed"] = {Path(e.path).stem: Path(e.path) for e in _files(root / "failed")}
        return out

    def count_done(self, stage: str) -> int:
        root = self.layout.state_dir(stage, "done")
        return sum(1 for hh in _subdirs(root) for _ in _files(root / hh))


class Claimer:
    """One worker's claims from one stage: O(1) per claim however many jobs wait.

    It keeps the list of non-empty pending shards in memory, starts at a shard derived from the worker
    id, lists lazily, and stops at the first rename that wins. Empty shards are dropped; the list is
    rebuilt only when it runs dry.
    """

    def __init__(self, queue: Queue, stage: str, wid: str):
        self.q, self.stage, self.wid = queue, stage, wid
        self.dest = queue.layout.claimed_dir(stage, wid)
        self.shards = []  # [(style, folder path as str)]
        self.rng = random.Random(wid)
        self._offset = zlib.crc32(wid.encode())
        self._empty_at = 0.0  # when a refresh last found nothing

    def refresh(self, min_interval: float = 0.0) -> bool:
        """Rebuild the shard list (O(shards)); at most every `min_interval` s while it stays empty."""
        if time.monotonic() - self._empty_at < min_interval:
            return False
        shards = [(d.parent.name if self.stage == "gen" else d.name, str(d)) for d in self.q.pending_dirs(self.stage)]
        if shards:
            k = self._offset % len(shards)
            shards = shards[k:] + shards[:k]
        self.shards = shards
        self._empty_at = 0.0 if shards else time.monotonic()
        return bool(shards)

    def has_work(self) -> bool:
        """Whether a pending job exists (empty shards found on the way are dropped)."""
        refreshed = False
        while True:
            if not self.shards:
                if refreshed or not self.refresh(min_interval=REFRESH_S):
                    self._empty_at = time.monotonic()
                    return False
                refreshed = True
            if next(_files(self.shards[0][1]), None) is not None:
                return True
            self.shards.pop(0)

    def _claim_one(self, style):
        """Rename one pending job into claimed/<wid>/; returns its path or None."""
        refreshed = False
        while True:
            if not self.shards:
                if refreshed or not self.refresh():
                    return None
                refreshed = True
            shard = next((sh for sh in self.shards if style is None or sh[0] == style), None)
            if shard is None:
                return None
            names = []
            for e in _files(shard[1]):
                names.append(e.name)
                if len(names) >= PEEK:
                    break
            if not names:
                self.shards.remove(shard)
                continue
            self.rng.shuffle(names)
            self.q._mkdir(self.dest)
            for name in names:
                try:
                    os.rename(os.path.join(shard[1], name), os.path.join(self.dest, name))
                    return self.dest / name
                except FileNotFoundError:
                    continue  # another worker won this one

    def claim(self, limit: int, prefer_style: str = None) -> list:
        """Claim up to `limit` jobs of one style; returns their records (one rename each, no write)."""
        jobs = []
        style = None
        if prefer_style is not None and any(sh[0] == prefer_style for sh in self.shards):
            style = prefer_style  # keep the loaded LoRA / cached style inversion
        while len(jobs) < limit:
            path = self._claim_one(style)
            if path is None:
                if style is not None and not jobs:
                    style = None
                    continue
                break
            try:
                job = read_job(path)
            except CorruptJob as err:
                self.q.quarantine(self.stage, path, str(err))
                continue
            if jobs and job.get("solo"):  # an isolated job runs alone: undo this claim (nothing written)
                self.q.move(path, self.q.pending_path(job))
                break
            job["owner"] = self.wid
            crash.point("after_claim")
            jobs.append(job)
            style = job["style"]
            if job.get("solo"):
                break
        return jobs
