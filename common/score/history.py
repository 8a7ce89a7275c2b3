"""OUTPUT/score_history.json: the final score under each set of settings this output folder was scored
with (keyed by the plan, the pixel settings' hash), so a new recipe is seen against the ones before it
(docs/score.md). The launcher adds the run after scoring; a damaged file is started afresh, never a crash."""
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

from common.jobqueue.atomic import write_bytes

HISTORY = "score_history.json"
MAX_RUNS = 20  # the most recent kept (the chart shows each)


def read_history(output: Path) -> List[dict]:
    """The entries, in the order last scored; whatever in the file is not an entry is ignored."""
    try:
        data = json.loads((Path(output) / HISTORY).read_text())
    except (OSError, ValueError):
        return []
    return [e for e in data if _is_entry(e)] if isinstance(data, list) else []


def _is_entry(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("plan"), str) and isinstance(entry.get("time"), str)
            and all(entry.get(k) is None or isinstance(entry.get(k), (int, float)) for k in ("result", "content")))


def _number(value) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def add_to_history(output: Path, plan: str, combined: dict, *, fsync: bool, now: Optional[str] = None) -> List[dict]:
    """Record this run's final scores under `plan` (replacing that plan's earlier entry, moved last); the
    entries after it."""
    entry = {"plan": plan, "time": now or datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "styles": len(combined["result"]["per_style"]),
             "result": _number(combined["result"]["final_score"]),
             "content": _number(combined["content"]["final_score"])}
    runs = ([e for e in read_history(output) if e["plan"] != plan] + [entry])[-MAX_RUNS:]
    write_bytes(Path(output) / HISTORY, json.dumps(runs, indent=1).encode(), fsync=fsync)
    return runs
