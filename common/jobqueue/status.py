"""What the queue holds: counts per stage and state, failures with reasons, throughput and ETA.
Reads the queue folder only (O(N)); `python launch.py status` prints it while a run goes on or after."""
import time

from common.jobqueue.jobs import CorruptJob, read_job
from common.jobqueue.layout import STAGES, STATES
from common.jobqueue.queue import Queue

RATE_WINDOW = 50  # the last finished jobs the rate is measured over


def failures(queue: Queue) -> list:
    """[(stage, job, last error)] for every dead-lettered job."""
    out = []
    for stage in STAGES:
        for jid, path in sorted(queue.scan(stage)["failed"].items()):
            try:
                job = read_job(path)
            except (CorruptJob, FileNotFoundError):
                continue
            last = job["errors"][-1] if job["errors"] else {"kind": "?", "text": "no error recorded"}
            out.append((stage, job, last))
    return out


def collect(queue: Queue) -> dict:
    counts = {}
    finished = []
    for stage in STAGES:
        scan = queue.scan(stage)
        counts[stage] = {state: len(scan[state]) for state in STATES}
        if stage == "sty":  # a done record's ctime is when its rename into done/ happened
            for path in scan["done"].values():
                try:
                    finished.append(path.stat().st_ctime)
                except FileNotFoundError:
                    pass
    finished = sorted(finished)[-RATE_WINDOW:]
    rate = (len(finished) - 1) / (finished[-1] - finished[0]) if len(finished) > 1 and \
        finished[-1] > finished[0] else None
    remaining = counts["sty"]["pending"] + counts["sty"]["claimed"] + counts["sty"]["retry"] + \
        counts["gen"]["pending"] + counts["gen"]["claimed"] + counts["gen"]["retry"]
    return {"counts": counts, "per_hour": rate * 3600 if rate else None, "remaining": remaining,
            "eta_s": remaining / rate if rate and remaining else (0.0 if not remaining else None),
            "last_finished": finished[-1] if finished else None, "failures": failures(queue)}


def _duration(s) -> str:
    if s is None:
        return "unknown"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_failures(fails: list) -> list:
    return [f"  {stage} {job['id']} style {job['style']} prompt {job['prompt']!r} after {job['attempts']} "
            f"attempt(s): {last['kind']}: {last['text'].strip().splitlines()[-1] if last['text'].strip() else ''}"
            for stage, job, last in fails]


def format_status(info: dict) -> str:
    lines = [f"{'stage':6}" + "".join(f"{s:>9}" for s in STATES)]
    for stage in STAGES:
        lines.append(f"{stage:6}" + "".join(f"{info['counts'][stage][s]:>9}" for s in STATES))
    rate = info["per_hour"]
    lines.append(f"throughput: {rate:.1f} images/hour" if rate else "throughput: not measured yet")
    age = f" (last finished {_duration(time.time() - info['last_finished'])} ago)" if info["last_finished"] else ""
    lines.append(f"remaining: {info['remaining']} job(s), ETA {_duration(info['eta_s'])}{age}")
    if info["failures"]:
        lines.append(f"failed ({len(info['failures'])}):")
        lines += format_failures(info["failures"])
    return "\n".join(lines)
