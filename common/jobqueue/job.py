"""The job record (docs/queue.md §2): one JSON file per job, parsed into a typed `Job` at the edge.

The queue reads and writes only these fields; `payload` belongs to the stage that owns the job (the
stage graph builds its task from it) and is opaque here. `attempts` counts failed attempts; `errors`
keeps the last few. Claim and finish times are not fields: they are the ctimes of the files in
claimed/ and done/ (the hot path writes no record, see queue.py).

A file that fails to parse or to match the schema is `CorruptJob`; recovery quarantines it and the
planner queues its task again (ids are pure functions of the task, so nothing is lost).
"""
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

VERSION = 2
MAX_ERRORS = 5
MAX_ERROR_TEXT = 2048
MAX_BYTES = 1 << 20  # a job file is a few hundred bytes; anything this large is not one of ours


class CorruptJob(ValueError):
    """A job file that is not valid JSON or does not match the schema."""


def job_key(stage: str, jid: str) -> str:
    """How jobs name each other in `after` (dependencies)."""
    return f"{stage}.{jid}"


@dataclass
class Job:
    id: str
    stage: str
    group: str  # claims batch jobs of one group (one style: one LoRA, one style inversion)
    plan: str  # the settings it was planned under (a pixel hash); a worker runs only its own plan's jobs
    payload: dict = field(default_factory=dict)
    after: tuple = ()  # job keys that must be done before this job can be claimed
    attempts: int = 0
    max_attempts: int = 3
    errors: list = field(default_factory=list)
    solo: bool = False  # failed inside a batch: runs alone next time
    not_before: Optional[float] = None  # retry backoff
    created_at: float = field(default_factory=time.time)
    v: int = VERSION

    @property
    def key(self) -> str:
        return job_key(self.stage, self.id)

    def follow(self, stage: str, after: tuple = ()) -> "Job":
        """The same unit of work's job in a later stage: fresh counters, same payload."""
        return Job(id=self.id, stage=stage, group=self.group, plan=self.plan, payload=dict(self.payload),
                   after=tuple(after), max_attempts=self.max_attempts)

    def reset(self) -> "Job":
        """Another max_attempts for a dead-lettered job (--retry-failed); its errors are kept."""
        return dataclasses.replace(self, attempts=0, not_before=None, solo=False)

    def add_error(self, wid: str, kind: str, text: str) -> "Job":
        entry = {"at": time.time(), "wid": wid, "kind": kind, "text": str(text)[-MAX_ERROR_TEXT:]}
        self.errors = (self.errors + [entry])[-MAX_ERRORS:]
        return self

    def last_error(self) -> dict:
        return self.errors[-1] if self.errors else {"kind": "?", "text": "no error recorded"}

    def dumps(self) -> bytes:
        data = {name: getattr(self, name) for name in _FIELDS}  # not asdict(): it deep-copies (hot path)
        data["after"] = list(self.after)
        return json.dumps(data, ensure_ascii=False).encode("utf-8")


_FIELDS = tuple(f.name for f in dataclasses.fields(Job))
_TYPES = {f.name: f.type for f in dataclasses.fields(Job)}
_CHECKS = {"id": str, "stage": str, "group": str, "plan": str, "payload": dict, "after": list, "attempts": int,
           "max_attempts": int, "errors": list, "solo": bool, "created_at": (int, float), "v": int}


def loads(data: bytes, where) -> Job:
    """Parse and check one job file's bytes; raise CorruptJob naming `where`."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptJob(f"{where}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CorruptJob(f"{where}: not a JSON object")
    unknown = sorted(set(raw) - set(_TYPES))
    if unknown:
        raise CorruptJob(f"{where}: unknown field {unknown[0]!r}")
    for key, kind in _CHECKS.items():
        value = raw.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CorruptJob(f"{where}: field {key!r} missing or of the wrong type")
    if raw["v"] != VERSION:
        raise CorruptJob(f"{where}: job format version {raw['v']}, expected {VERSION}")
    nb = raw.get("not_before")
    if nb is not None and (not isinstance(nb, (int, float)) or isinstance(nb, bool)):
        raise CorruptJob(f"{where}: field 'not_before' is not a number")
    if not all(isinstance(k, str) for k in raw["after"]) or not all(isinstance(e, dict) for e in raw["errors"]):
        raise CorruptJob(f"{where}: field 'after' or 'errors' holds entries of the wrong type")
    if Path(where).stem != raw["id"]:
        raise CorruptJob(f"{where}: file name does not match id {raw['id']!r}")
    raw["after"] = tuple(raw["after"])
    return Job(**raw)


def read_job(path) -> Job:
    """The job at `path`; FileNotFoundError if it moved meanwhile, CorruptJob if it is not a job."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # a planted link is not a job (ELOOP)
        try:
            data = chunk = os.read(fd, 1 << 16)
            while chunk and len(data) <= MAX_BYTES:
                chunk = os.read(fd, 1 << 16)
                data += chunk
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CorruptJob(f"{path}: unreadable ({e.strerror})") from None
    if len(data) > MAX_BYTES:
        raise CorruptJob(f"{path}: larger than {MAX_BYTES} bytes, not a job file")
    return loads(data, path)
