"""The manifest (docs/queue.md §2): the settings a queue was planned under, so results never mix.

It is the first thing planning writes and the last thing `--fresh` removes: a queue holding any job
always has a manifest, so a rerun with other pixel settings is refused even after an interrupted plan.
It also names the stages it was planned with, so `--fresh` removes exactly the folders the queue made.
"""
import json
import time

from common.jobqueue.atomic import write_bytes

VERSION = 2


class ManifestError(ValueError):
    """The queue was planned with other pixel settings."""


def read_manifest(queue) -> dict:
    """The manifest's fields, {} when there is none; an unreadable one reads as settings unknown."""
    path = queue.layout.manifest
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {"plan": None}
    return data if isinstance(data, dict) else {"plan": None}


def check_manifest(queue, plan: str):
    """Refuse a queue planned with other pixel settings (results would mix)."""
    data = read_manifest(queue)
    if data and data.get("plan") != plan:
        raise ManifestError(f"{queue.layout.manifest}: this queue was planned with other pixel settings (plan "
                            f"{data.get('plan')} != {plan}); rerun with --fresh to re-plan: every result made "
                            f"under other settings is then made again and replaces the old one once it is whole "
                            f"(until then the old one stays), or restore the config")


def write_manifest(queue, plan: str, tasks: int = None):
    data = {"v": VERSION, "plan": plan, "stages": list(queue.stages), "tasks": tasks, "planned_at": time.time()}
    write_bytes(queue.layout.manifest, json.dumps(data, indent=1).encode(), fsync=queue.fsync)
