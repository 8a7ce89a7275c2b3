"""The job record: one JSON object per job (QUEUE.md §2), its schema check, and its Task view.

`attempts` counts failed attempts; `errors` keeps the last 5. Claim and finish times are not fields:
they are the ctime of the file in claimed/ and done/ (the hot path writes no record, see queue.py).

A job file that fails to parse or to match the schema is `CorruptJob`; recovery quarantines it and the
planner queues the task again (the id is a pure function of the task, so nothing is lost).
"""
import hashlib
import json
import time
from pathlib import Path

from common.stage import Task

VERSION = 1
MAX_ERRORS = 5
MAX_ERROR_TEXT = 2048
_SCHEMA = {"v": int, "id": str, "stage": str, "style": str, "prompt": str, "name": str, "seed": int,
           "style_dir": str, "out": str, "content_png": str, "content_latent": str,
           "attempts": int, "max_attempts": int, "errors": list}


class CorruptJob(ValueError):
    """A job file that is not valid JSON or does not match the schema."""


def job_id(style: str, prompt: str, seed: int, cfg_hash: str) -> str:
    """The id both stages share: what the job produces, so planning is idempotent."""
    key = json.dumps([style, prompt, seed, cfg_hash], ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


def new_job(task: Task, stage: str, max_attempts: int) -> dict:
    return {"v": VERSION, "id": task.id, "stage": stage, "style": task.style, "prompt": task.prompt,
            "name": task.name, "seed": task.seed, "style_dir": str(task.style_dir), "out": str(task.output_png),
            "content_png": str(task.content_png), "content_latent": str(task.content_latent),
            "attempts": 0, "max_attempts": max_attempts, "errors": [], "owner": None,
            "created_at": time.time(), "not_before": None}


def to_task(job: dict) -> Task:
    return Task(id=job["id"], style=job["style"], prompt=job["prompt"], name=job["name"], seed=job["seed"],
                style_dir=Path(job["style_dir"]), content_png=Path(job["content_png"]),
                content_latent=Path(job["content_latent"]), output_png=Path(job["out"]))


def add_error(job: dict, wid: str, kind: str, text: str) -> dict:
    job["errors"] = (job["errors"] + [{"at": time.time(), "wid": wid, "kind": kind,
                                       "text": str(text)[-MAX_ERROR_TEXT:]}])[-MAX_ERRORS:]
    return job


def dumps(job: dict) -> bytes:
    return json.dumps(job, ensure_ascii=False).encode("utf-8")


def loads(data: bytes, where) -> dict:
    """Parse and check one job file's bytes; raise CorruptJob naming `where`."""
    try:
        job = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptJob(f"{where}: not valid JSON ({e})") from None
    if not isinstance(job, dict):
        raise CorruptJob(f"{where}: not a JSON object")
    for key, kind in _SCHEMA.items():
        if type(job.get(key)) is not kind:
            raise CorruptJob(f"{where}: field {key!r} missing or not {kind.__name__}")
    if job["v"] != VERSION or job["stage"] not in ("gen", "sty"):
        raise CorruptJob(f"{where}: unknown version {job['v']} or stage {job['stage']!r}")
    if Path(where).stem != job["id"]:
        raise CorruptJob(f"{where}: file name does not match id {job['id']!r}")
    return job


def read_job(path) -> dict:
    try:
        return loads(Path(path).read_bytes(), path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CorruptJob(f"{path}: unreadable ({e.strerror})") from None
