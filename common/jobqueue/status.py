"""What the queue holds: counts per stage and state, failures with reasons, throughput and ETA.
Reads the queue folder only (O(N)); `python launch.py status` prints it while a run goes on or after.
Stages are the queue's, in pipeline order; the throughput counts one stage's finished jobs (the results:
by default the last stage)."""
import time

from common.jobqueue.layout import LIVE, STATES

RATE_WINDOW = 50  # the last finished jobs the rate is measured over


def collect(queue, final: str = None) -> dict:
    counts, finished = {}, []
    final = final or queue.stages[-1]
    for stage in queue.stages:
        scan = queue.scan(stage)
        counts[stage] = {state: len(scan[state]) for state in STATES}
        if stage == final:  # a done record's ctime is when its rename into done/ happened
            for path in scan["done"].values():
                try:
                    finished.append(path.stat().st_ctime)
                except FileNotFoundError:
                    pass
    finished = sorted(finished)[-RATE_WINDOW:]
    rate = (len(finished) - 1) / (finished[-1] - finished[0]) if len(finished) > 1 and \
        finished[-1] > finished[0] else None
    remaining = sum(counts[s][state] for s in queue.stages for state in LIVE)
    return {"counts": counts, "per_hour": rate * 3600 if rate else None, "remaining": remaining,
            "eta_s": remaining / rate if rate and remaining else (0.0 if not remaining else None),
            "last_finished": finished[-1] if finished else None, "failures": queue.failures()}


def duration(s) -> str:
    if s is None:
        return "unknown"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_failures(fails: list) -> list:
    lines = []
    for stage, job in fails:
        last = job.last_error()
        text = last["text"].strip().splitlines()[-1] if last["text"].strip() else ""
        what = " ".join(f"{k} {v!r}" for k, v in job.payload.items() if k in ("prompt",))
        lines.append(f"  {stage} {job.id} {job.group} {what} after {job.attempts} attempt(s): {last['kind']}: {text}")
    return lines


def format_status(info: dict, extra: dict = None) -> str:
    """The counts table; `extra` adds lines per stage (e.g. training steps per style)."""
    lines = [f"{'stage':6}" + "".join(f"{s:>9}" for s in STATES)]
    for stage, row in info["counts"].items():
        lines.append(f"{stage:6}" + "".join(f"{row[s]:>9}" for s in STATES))
        lines += (extra or {}).get(stage, [])
    rate = info["per_hour"]
    lines.append(f"throughput: {rate:.1f} images/hour" if rate else "throughput: not measured yet")
    age = f" (last finished {duration(time.time() - info['last_finished'])} ago)" if info["last_finished"] else ""
    lines.append(f"remaining: {info['remaining']} job(s), ETA {duration(info['eta_s'])}{age}")
    if info["failures"]:
        lines.append(f"failed ({len(info['failures'])}):")
        lines += format_failures(info["failures"])
    return "\n".join(lines)
