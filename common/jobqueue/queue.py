"""Queue operations (docs/queue.md §3). Each state change is one `link` or `rename`, the commit point; a job
is updated in place (tmp/ + os.replace) before it moves, never copied and deleted.

- enqueue: write tmp, **link** into pending (EEXIST: already queued), or into blocked/<key>/ while a job
  it runs after is not done.
- claim: **rename** pending -> claimed/<wid>; ENOENT means another worker won, try the next entry.
- complete: outputs are in place (the stage's rules say so); its follow-up jobs are published, then
  **link** claimed -> done (then the claim is unlinked); jobs blocked on it move on; the rules drop what
  it made useless.
- fail / reclaim: update in place (attempts + 1, the error), **rename** to retry, failed or pending.
- release (shutdown): **rename** claimed -> pending.

The queue knows nothing of what a job makes: each stage's `StageRules` says when a job is done, which
half-written files its dead owner may leave, what to publish when it completes and what to clean up.

`attempts` counts failed attempts (a crash or hang of the owner counts, a release does not), so the hot
path writes no record (claim: one rename; complete: one link and one unlink): on ext4 a rename over an
existing file flushes its data (auto_da_alloc), about 1 ms, which would dominate the queue's cost. The
owner is the claimed/<wid>/ folder; claim and finish times are the files' ctimes (a rename or link sets it).

The claim file is the worker's token (docs/queue.md §10): a worker whose job was taken away (its lease ran
out on a cluster, where its death could not be proven) finds its claim gone and completes, fails or
releases nothing ("lost"). A done record is created by `link`, which only one completion can win, so a
job run twice is counted once.
"""
import ctypes
import errno
import fnmatch
import os
import random
import time
import uuid
import zlib
from glob import escape as glob_escape
from pathlib import Path
from typing import Iterable, List, Mapping, Protocol

from common.jobqueue.atomic import write_bytes
from common.jobqueue import crash
from common.jobqueue.job import CorruptJob, Job, read_job
from common.jobqueue.layout import LIVE, Layout

REFRESH_S = 0.5  # an empty stage's folders are re-listed at most this often by has_work()
PEEK = 8  # a claim picks at random among the first PEEK entries of a shard, to spread racing workers


class StageRules(Protocol):
    """What the queue learns from the stage that owns a job (the stage graph implements it)."""
    sharded: bool  # split each group's pending jobs over 256 folders (large stages)

    def done(self, job: Job) -> bool:
        """The job's outputs exist and are whole: the truth that it is done."""

    def temp_files(self, job: Job) -> Iterable[Path]:
        """Half-written files a dead owner of the job may have left."""

    def follow_ups(self, job: Job) -> Iterable[Job]:
        """Jobs to publish when this one completes (the same unit's next stage)."""

    def after_done(self, job: Job) -> None:
        """Remove what the completion made useless (spent hand-offs, working files)."""


def drop_temp_files(paths: Iterable[Path]):
    """Delete half-written temp files (common.atomic names them .<target>.*.tmp) beside each target."""
    for target in paths:
        target = Path(target)
        for tmp in target.parent.glob(f".{glob_escape(target.name)}.*.tmp"):
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass


def remove_files(folder: Path, match=lambda name: True) -> List[Path]:
    """Unlink the files of `folder` whose names `match`, never through a link: the folder is opened with
    O_NOFOLLOW and each entry is removed relative to it (dir_fd), so a link planted in place of the folder
    is refused (ELOOP) and one inside it loses only itself. Returns what was removed."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return []
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(e.errno, "a symbolic link or a file where the queue keeps a folder; remove it",
                          str(folder)) from None
        raise
    removed = []
    try:
        with os.scandir(fd) as it:
            names = [e.name for e in it if match(e.name) and not e.is_dir(follow_symlinks=False)]
        for name in names:
            try:
                os.unlink(name, dir_fd=fd)
                removed.append(Path(folder) / name)
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
    return removed


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_SYMLINK_FOLLOW = -100, 0x400


def _link_fd(fd: int, dst: Path):
    """Give an O_TMPFILE a name (os.link would not follow /proc/self/fd/N). Raises FileExistsError."""
    if _libc.linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD, os.fsencode(dst), AT_SYMLINK_FOLLOW):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(dst))


def _files(folder):
    """Lazily the *.json entries of a folder (none if it does not exist)."""
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.endswith(".json"):
                    yield e
    except (FileNotFoundError, NotADirectoryError):
        return


def _subdirs(folder) -> list:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _has_subdirs(folder: str) -> bool:
    """Whether a folder holds any folder: one stat where the filesystem counts them in st_nlink
    (2 + subfolders on ext4, xfs, tmpfs), a listing where it does not (btrfs says 1)."""
    try:
        links = os.stat(folder).st_nlink
    except FileNotFoundError:
        return False
    return links > 2 or (links == 1 and bool(_subdirs(folder)))


def _unlink(path: Path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def split_key(key: str):
    stage, _, jid = key.partition(".")
    return stage, jid


class Queue:
    def __init__(self, root, rules: Mapping[str, StageRules], fsync: bool = True):
        self.rules = dict(rules)
        self.layout = Layout(root, {s: r.sharded for s, r in self.rules.items()})
        self.stages = self.layout.stages
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

    def rewrite(self, path: Path, job: Job):
        """Update a job in place: a reader sees the old record or the new one."""
        self._mkdir(self.layout.tmp)
        write_bytes(path, job.dumps(), fsync=self.fsync, tmp_dir=self.layout.tmp)

    def move(self, src: Path, dst: Path):
        self._mkdir(dst.parent)
        os.rename(src, dst)
        self._sync_dir(dst.parent)

    def pending_path(self, job: Job) -> Path:
        return self.layout.pending_dir(job.stage, job.group, job.id) / f"{job.id}.json"

    def is_done(self, key: str) -> bool:
        stage, jid = split_key(key)
        return stage in self.rules and self.layout.done_path(stage, jid).exists()

    def _unmet(self, job: Job):
        """The first job `job` runs after that is not done yet, or None."""
        return next((k for k in job.after if not self.is_done(k)), None)

    # -- operations -----------------------------------------------------------------------------------
    def enqueue(self, job: Job) -> bool:
        """Publish a new job into pending (or blocked/<key>/ while a job it runs after is not done);
        False if it was already there.

        The record is written to an unnamed O_TMPFILE in tmp/ (nothing is left behind by a crash) and
        linked into place; a named temp file is the fallback where O_TMPFILE is not supported."""
        unmet = self._unmet(job)
        folder = self.layout.blocked_dir(job.stage, unmet) if unmet else self.pending_path(job).parent
        dst = folder / f"{job.id}.json"
        self._mkdir(dst.parent)
        self._mkdir(self.layout.tmp)
        data = job.dumps()
        try:
            fd = os.open(self.layout.tmp, os.O_TMPFILE | os.O_WRONLY, 0o644)
        except (AttributeError, OSError):
            fd = None
        if fd is None:
            tmp = write_bytes(self.layout.tmp / f"{job.id}.json", data, fsync=self.fsync, tmp_dir=self.layout.tmp)
            try:
                os.link(tmp, dst)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        else:
            try:
                os.write(fd, data)
                if self.fsync:
                    os.fsync(fd)
                _link_fd(fd, dst)
            except FileExistsError:
                return False
            finally:
                os.close(fd)
        self._sync_dir(dst.parent)
        if unmet and self.is_done(unmet):  # it finished while we linked: its release may have missed us
            self._advance(job.stage, unmet)
        return True

    def requeue(self, path: Path, job: Job):
        """Give a dead-lettered job another try (--retry-failed): rewrite it in place, then move it to
        pending, or to blocked/ while a job it runs after is not done."""
        self.rewrite(path, job)
        unmet = self._unmet(job)
        self.move(path, self.layout.blocked_dir(job.stage, unmet) / path.name if unmet else self.pending_path(job))

    def state_of(self, stage: str, jid: str, group: str = None):
        """(state, path) of a job, or (None, None); `group` (when known) saves listing the groups.
        Checked in the order jobs flow (blocked, pending, claimed, retry, done, failed), so a job
        moving on meanwhile is still seen. (String paths: publish() runs it on every completion.)"""
        lay, name = self.layout, f"{jid}.json"
        base = os.path.join(lay.root, stage)
        blocked = os.path.join(base, "blocked")
        keys = _subdirs(blocked) if _has_subdirs(blocked) else ()
        candidates = [("blocked", os.path.join(blocked, key, name)) for key in keys]
        for g in [group] if group is not None else _subdirs(os.path.join(base, "pending")):
            candidates.append(("pending", str(lay.pending_dir(stage, g, jid) / name)))
        for state, path in candidates:
            if os.path.exists(path):
                return state, Path(path)
        claimed = os.path.join(base, "claimed")
        for wid in _subdirs(claimed):
            path = os.path.join(claimed, wid, name)
            if os.path.exists(path):
                return "claimed", Path(path)
        for state, path in (("retry", os.path.join(base, "retry", name)),
                            ("done", os.path.join(base, "done", jid[:2], name)),
                            ("failed", os.path.join(base, "failed", name))):
            if os.path.exists(path):
                return state, Path(path)
        return None, None

    def publish(self, job: Job) -> bool:
        """Enqueue a follow-up job unless it exists already in any state or its outputs are in place
        (a job reclaimed after its publish step publishes again)."""
        if self.state_of(job.stage, job.id, job.group)[0] is not None or self.rules[job.stage].done(job):
            return False
        return self.enqueue(job)

    def claimer(self, stage: str, wid: str) -> "Claimer":
        return Claimer(self, stage, wid)

    def complete(self, wid: str, job: Job) -> bool:
        """Mark a claimed job done (its outputs were checked): publish its follow-ups first. False when the
        claim was taken away (the job is another worker's now) or another completion of it was counted."""
        rules = self.rules[job.stage]
        claim = self.layout.claimed_dir(job.stage, wid) / f"{job.id}.json"
        if not claim.exists():
            return False
        published = False
        for follow in rules.follow_ups(job):
            published = self.publish(follow) or published
        if published:
            crash.point("after_publish")
        crash.point("before_done")
        counted = self._finish(claim, self.layout.done_path(job.stage, job.id))
        if counted is None:
            return False
        self.release_waiters(job.key)  # (again, for a duplicate: both steps are idempotent)
        rules.after_done(job)
        return counted

    def _finish(self, claim: Path, done: Path):
        """claimed -> done, counted at most once per job: link, then drop the claim. True: this completion
        counts; False: a done record was there (a duplicate, or our own link before a crash); None: the
        claim was taken away. A crash between the link and the unlink leaves both; a reclaim ends it."""
        self._mkdir(done.parent)
        try:
            os.link(claim, done)
        except FileExistsError:
            _unlink(claim)
            return False
        except FileNotFoundError:
            return None
        self._sync_dir(done.parent)
        _unlink(claim)
        return True

    def fail(self, wid: str, job: Job, kind: str, text: str, *, isolate: bool = False,
             backoff_base: float = 30.0, backoff_max: float = 600.0) -> str:
        """Count a failed attempt and record its error; retry after a backoff, or dead-letter at max.

        `isolate`: the job failed inside a batch, so the fault may be another job's: the attempt is not
        counted and the job runs alone next time (a poison job then exhausts only its own attempts).
        """
        path = self.layout.claimed_dir(job.stage, wid) / f"{job.id}.json"
        if not path.exists():
            return "lost"  # taken away meanwhile: the failure is not ours to record
        job.add_error(wid, kind, text)
        if isolate:
            job.solo = True
            self.rewrite(path, job)
            self.move(path, self.pending_path(job))
            return "pending"
        job.attempts += 1
        if job.attempts >= job.max_attempts:
            self.rewrite(path, job)
            self.move(path, self.layout.failed_path(job.stage, job.id))
            last = (text.strip().splitlines() or [""])[-1]
            self.fail_waiters(job.key, f"waited for {job.key}, which failed: {last}")
            return "failed"
        delay = min(backoff_base * 2 ** (job.attempts - 1), backoff_max) * random.uniform(0.8, 1.2)
        job.not_before = time.time() + delay
        self.rewrite(path, job)
        if delay <= 0:
            self.move(path, self.pending_path(job))
            return "pending"
        self.move(path, self.layout.retry_path(job.stage, job.id))
        return "retry"

    def release(self, wid: str, job: Job) -> bool:
        """Give a claimed job back unrun (shutdown): the attempt does not count. False if it was taken."""
        try:
            self.move(self.layout.claimed_dir(job.stage, wid) / f"{job.id}.json", self.pending_path(job))
        except FileNotFoundError:
            return False
        return True

    def reclaim(self, wid: str, counted: bool, reason: str, **backoff) -> list:
        """Recover the jobs of a worker known to be dead. Launcher only.

        A job whose outputs are in place is completed; otherwise it goes back (counted: an attempt
        spent, else returned as unrun). Returns [(stage, id, outcome)]."""
        outcomes = []
        pid = wid.rsplit("-", 1)[-1]
        if pid.isdigit():  # its half-written queue records (common.atomic puts the pid in temp names)
            remove_files(self.layout.tmp, lambda name: fnmatch.fnmatchcase(name, f".*.{pid}.*.tmp"))
        for stage in self.stages:
            folder = self.layout.claimed_dir(stage, wid)
            entries = list(_files(folder))
            for e in entries:
                try:
                    job = read_job(e.path)
                except CorruptJob as err:
                    outcomes.append((stage, Path(e.path).stem, self.quarantine(stage, Path(e.path), str(err))))
                    continue
                rules = self.rules[stage]
                drop_temp_files(rules.temp_files(job))
                if rules.done(job):
                    self.complete(wid, job)  # (if not counted here, by its owner or before a crash)
                    outcomes.append((stage, job.id, "done"))
                elif counted:
                    outcomes.append((stage, job.id, self.fail(wid, job, "exit", reason,
                                                              isolate=len(entries) > 1, **backoff)))
                else:
                    self.rewrite(Path(e.path), job.add_error(wid, "released", reason))
                    self.release(wid, job)
                    outcomes.append((stage, job.id, "pending"))
            try:
                folder.rmdir()
            except OSError:
                pass
        return outcomes

    def quarantine(self, stage: str, path: Path, why: str) -> str:
        """Move a bad job file aside (failed/corrupt/); the planner queues its task again."""
        dst = self.layout.corrupt_dir(stage) / f"{path.name}.{uuid.uuid4().hex[:6]}"
        self._mkdir(dst.parent)
        try:
            os.rename(path, dst)
        except FileNotFoundError:  # another process quarantined it first
            return "corrupt"
        write_bytes(dst.with_suffix(dst.suffix + ".why"), (why + "\n").encode(), fsync=self.fsync)
        return "corrupt"

    def promote_due(self, stage: str, now: float = None) -> int:
        """Move retry jobs whose backoff has passed back to pending (any process may; one rename wins)."""
        now = time.time() if now is None else now
        moved = 0
        for path, job in self._jobs_in(stage, self.layout.state_dir(stage, "retry")):
            if (job.not_before or 0) <= now:
                try:
                    self.move(path, self.pending_path(job))
                    moved += 1
                except FileNotFoundError:
                    pass
        return moved

    def _jobs_in(self, stage: str, folder):
        """(path, job) of each job file in a folder, listed first (they move as we go); files that vanish
        meanwhile are skipped and corrupt ones quarantined."""
        for e in list(_files(folder)):
            try:
                yield Path(e.path), read_job(e.path)
            except FileNotFoundError:
                continue
            except CorruptJob as err:
                self.quarantine(stage, Path(e.path), str(err))

    # -- dependencies ---------------------------------------------------------------------------------
    def _advance(self, stage: str, key: str):
        """Move the jobs of `stage` blocked on `key` (now done) on: to pending, or to the next job they
        wait for. Any process may; a lost rename race (ENOENT) means another one did it."""
        folder = self.layout.blocked_dir(stage, key)
        for path, job in self._jobs_in(stage, folder):
            unmet = self._unmet(job)
            dst = self.layout.blocked_dir(stage, unmet) / path.name if unmet else self.pending_path(job)
            try:
                self.move(path, dst)
            except FileNotFoundError:
                continue
            if unmet and self.is_done(unmet):
                self._advance(stage, unmet)
        try:
            folder.rmdir()
        except OSError:
            pass

    def release_waiters(self, key: str):
        """A job is done: the jobs waiting for it move on (a stat per stage; a listing where some wait)."""
        for stage in self.stages:
            blocked = os.path.join(self.layout.root, stage, "blocked")
            if _has_subdirs(blocked) and os.path.isdir(os.path.join(blocked, key)):
                self._advance(stage, key)

    def fail_waiters(self, key: str, why: str) -> int:
        """Dead-letter the jobs waiting for `key` (it failed or is gone), and theirs in turn."""
        n = 0
        for stage, (path, job) in ((s, pj) for s in self.stages
                                   for pj in self._jobs_in(s, self.layout.blocked_dir(s, key))):
            job.add_error("queue", "dependency", why)
            self.rewrite(path, job)
            try:
                self.move(path, self.layout.failed_path(stage, job.id))
            except FileNotFoundError:
                continue
            n += 1 + self.fail_waiters(job.key, f"waited for {job.key}, which failed")
            try:
                path.parent.rmdir()
            except OSError:
                pass
        return n

    def sweep_blocked(self) -> int:
        """The backstop of release_waiters: move on jobs whose dependency is done, and dead-letter those
        whose dependency failed or is no longer queued (quarantined). O(blocked keys); launcher only."""
        moved = 0
        for stage in self.stages:
            for key in _subdirs(self.layout.state_dir(stage, "blocked")):
                dep_stage, dep_id = split_key(key)
                state = self.state_of(dep_stage, dep_id)[0] if dep_stage in self.rules else None
                if state == "done":
                    self._advance(stage, key)
                    moved += 1
                elif state not in LIVE:
                    why = f"waited for {key}, which " + ("failed" if state == "failed" else "is no longer queued")
                    moved += self.fail_waiters(key, why + "; rerun the launcher to plan it again")
        return moved

    # -- counting -------------------------------------------------------------------------------------
    def pending_dirs(self, stage: str) -> list:
        """[(group, folder)] of a stage's pending shards."""
        root = self.layout.state_dir(stage, "pending")
        groups = _subdirs(root)
        if not self.layout.sharded[stage]:
            return [(g, root / g) for g in groups]
        return [(g, root / g / hh) for g in groups for hh in _subdirs(root / g)]

    def count_pending(self, stage: str) -> int:
        """Pending jobs of a stage (the back-pressure signal: keep it to bounded stages)."""
        return sum(1 for _, d in self.pending_dirs(stage) for _ in _files(d))

    def has_pending(self, stage: str) -> bool:
        return any(next(_files(d), None) is not None for _, d in self.pending_dirs(stage))

    def in_flight(self) -> bool:
        """Any job not yet done or failed, in any stage (pending, blocked, retry or claimed)."""
        for stage in self.stages:
            if self.has_pending(stage) or next(_files(self.layout.state_dir(stage, "retry")), None):
                return True
            for state in ("claimed", "blocked"):
                folder = self.layout.state_dir(stage, state)
                if any(next(_files(folder / w), None) for w in _subdirs(folder)):
                    return True
        return False

    def scan(self, stage: str) -> dict:
        """{state: {id: path}} for every job file of a stage. O(N): startup, status and tests only."""
        lay = self.layout
        out = {"pending": {Path(e.path).stem: Path(e.path) for _, d in self.pending_dirs(stage) for e in _files(d)}}
        for state in ("blocked", "claimed"):
            folder = lay.state_dir(stage, state)
            out[state] = {Path(e.path).stem: Path(e.path) for w in _subdirs(folder) for e in _files(folder / w)}
        out["retry"] = {Path(e.path).stem: Path(e.path) for e in _files(lay.state_dir(stage, "retry"))}
        done = lay.state_dir(stage, "done")
        out["done"] = {Path(e.path).stem: Path(e.path) for hh in _subdirs(done) for e in _files(done / hh)}
        out["failed"] = {Path(e.path).stem: Path(e.path) for e in _files(lay.state_dir(stage, "failed"))}
        return out

    def count_done(self, stage: str) -> int:
        root = self.layout.state_dir(stage, "done")
        return sum(1 for hh in _subdirs(root) for _ in _files(root / hh))

    def failures(self) -> list:
        """[(stage, job)] for every dead-lettered job."""
        out = []
        for stage in self.stages:
            for _, path in sorted(self.scan(stage)["failed"].items()):
                try:
                    out.append((stage, read_job(path)))
                except (CorruptJob, FileNotFoundError):
                    continue
        return out


class Claimer:
    """One worker's claims from one stage: O(1) per claim however many jobs wait.

    It keeps the list of non-empty pending shards in memory, starts at a shard derived from the worker
    id, lists lazily, and stops at the first rename that wins. Empty shards are dropped; the list is
    rebuilt only when it runs dry.
    """

    def __init__(self, queue: Queue, stage: str, wid: str):
        self.q, self.stage, self.wid = queue, stage, wid
        self.dest = queue.layout.claimed_dir(stage, wid)
        self.shards = []  # [(group, folder path as str)]
        self.rng = random.Random(wid)
        self._offset = zlib.crc32(wid.encode())
        self._empty_at = 0.0  # when a refresh last found nothing

    def refresh(self, min_interval: float = 0.0) -> bool:
        """Rebuild the shard list (O(shards)); at most every `min_interval` s while it stays empty."""
        if time.monotonic() - self._empty_at < min_interval:
            return False
        shards = [(g, str(d)) for g, d in self.q.pending_dirs(self.stage)]
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

    def _claim_one(self, group):
        """Rename one pending job into claimed/<wid>/; returns its path or None."""
        refreshed = False
        while True:
            if not self.shards:
                if refreshed or not self.refresh():
                    return None
                refreshed = True
            shard = next((sh for sh in self.shards if group is None or sh[0] == group), None)
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
                dst = os.path.join(self.dest, name)
                try:
                    os.rename(os.path.join(shard[1], name), dst)
                    return self.dest / name
                except FileNotFoundError:
                    if os.path.exists(dst):  # a retried rename (NFS) whose first try won
                        return self.dest / name
                    continue  # another worker won this one

    def claim(self, limit: int, prefer_group: str = None) -> list:
        """Claim up to `limit` jobs of one group; returns their records (one rename each, no write)."""
        jobs = []
        group = None
        if prefer_group is not None and any(sh[0] == prefer_group for sh in self.shards):
            group = prefer_group  # keep the loaded LoRA / cached style inversion
        while len(jobs) < limit:
            path = self._claim_one(group)
            if path is None:
                if group is not None and not jobs:
                    group = None
                    continue
                break
            try:
                job = read_job(path)
            except CorruptJob as err:
                self.q.quarantine(self.stage, path, str(err))
                continue
            if job.stage != self.stage:
                self.q.quarantine(self.stage, path, f"{path}: a {job.stage!r} job in the {self.stage!r} queue")
                continue
            if jobs and job.solo:  # an isolated job runs alone: undo this claim (nothing written)
                self.q.move(path, self.q.pending_path(job))
                break
            crash.point("after_claim")
            jobs.append(job)
            group = job.group
            if job.solo:
                break
        return jobs


