"""Planning (docs/queue.md §1): queue exactly what is missing; the outputs on disk are the truth.

The stage graph expands the dataset into `Node`s (one per job any stage would run, with the jobs whose
outputs it reads). A node is *needed* when its outputs are not in place and something depends on it: it is
a final node (no other node reads it) or a needed node reads it. So a finished task is skipped whole, a
task whose content exists goes straight to the stage after, and a spent hand-off is not made again.
Outputs count only when made by what this run would make them with (their provenance, docs/queue.md §11):
a result made otherwise is needed again, and its stage replaces it by one rename once the new one is made.
A needed node is queued now when what it reads is in place; while a node it reads is still to run, it
either waits in blocked/ (`after`) or, on a 1:1 edge, is published by that node's completion.
Planning twice enqueues nothing new. It runs under the launcher lock, after recovery, before any worker.
"""
import os
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from common.jobqueue import crash
from common.jobqueue.job import CorruptJob, Job, read_job
from common.jobqueue.layout import LIVE

WAITING = ("pending", "blocked", "retry")  # not claimed: can be closed or dropped by the planner


@dataclass(frozen=True)
class Node:
    job: Job  # the record it would enqueue
    needs: Tuple[str, ...] = ()  # keys of the jobs whose outputs it reads
    published_by: Optional[str] = None  # the need whose completion publishes it (else it waits)


@dataclass
class StageCount:
    """One stage's nodes: all of them, those with nothing left to do, those that cannot finish."""
    total: int = 0
    finished: int = 0
    failed: int = 0


@dataclass
class PlanReport:
    total: int = 0  # final nodes: the results the user asked for
    finished: int = 0  # final nodes whose outputs are in place
    queued: Dict[str, int] = field(default_factory=dict)  # {stage: jobs enqueued now}
    in_queue: int = 0  # needed jobs already pending, blocked, retrying or claimed
    failed: List[Job] = field(default_factory=list)  # dead letters left alone (see --retry-failed)
    retried: List[Job] = field(default_factory=list)  # dead letters requeued: their inputs changed since
    failed_results: int = 0  # final nodes that cannot finish because of them
    superseded: Dict[Tuple[str, str], int] = field(default_factory=dict)  # {(stage, why): whole outputs redone}
    stages: Dict[str, StageCount] = field(default_factory=dict)  # the same counts per stage, every node
    notes: List[str] = field(default_factory=list)


def plan(queue, nodes: List[Node], retry_failed: bool = False) -> PlanReport:
    """Bring the queue in line with `nodes` (in stage order) and the outputs on disk."""
    report = PlanReport(queued={s: 0 for s in queue.stages}, stages={s: StageCount() for s in queue.stages})
    states = {}  # job key -> (state, path)
    for stage in queue.stages:
        for state, jobs in queue.scan(stage).items():
            for jid, path in jobs.items():
                states[f"{stage}.{jid}"] = (state, path)
    by_key = {n.job.key: n for n in nodes}
    readers = {k: [] for k in by_key}
    for n in nodes:
        for k in n.needs:
            readers[k].append(n.job.key)

    needed = {}
    for n in reversed(nodes):  # readers come after what they read
        key = n.job.key
        wanted = not readers[key] or any(needed[r] for r in readers[key])
        needed[key] = wanted and not queue.rules[n.job.stage].done(n.job)
        superseded = getattr(queue.rules[n.job.stage], "superseded", None) if needed[key] else None
        why = superseded(n.job) if superseded else None
        if why:
            report.superseded[(n.job.stage, why)] = report.superseded.get((n.job.stage, why), 0) + 1

    stuck = set()  # needed nodes that cannot run: dead-lettered, or reading one that is
    for n in nodes:
        key, job = n.job.key, n.job
        state, path = states.get(key, (None, None))
        final, count = not readers[key], report.stages[job.stage]
        report.total += final
        count.total += 1
        if not needed[key]:
            report.finished += final
            count.finished += 1
            if state in WAITING:  # nothing left to do: close a job still waiting
                queue.move(path, queue.layout.done_path(job.stage, job.id))
                crash.point("plan_step")
            continue
        for partial in queue.rules[job.stage].partial_outputs(job):
            partial.unlink()
            report.notes.append(f"truncated output {partial} removed; making it again")
        if any(k in stuck for k in n.needs):
            stuck.add(key)
            report.failed_results += final
            count.failed += 1
            continue
        if state == "failed" and not retry_failed:
            dead = _read(path, job)
            if _worth_retrying(queue.rules[job.stage], dead, n.needs, stuck):
                report.retried.append(dead)
            else:
                stuck.add(key)
                report.failed_results += final
                count.failed += 1
                report.failed.append(dead)
                continue
        remade = n.published_by is not None and needed[n.published_by]
        if state in LIVE and not (remade and state in WAITING):
            report.in_queue += 1
            continue
        if remade:  # the completion of what it reads publishes it again
            if state is not None:
                path.unlink()
                crash.point("plan_step")
            continue
        after = tuple(k for k in n.needs if needed[k])
        if state == "failed":
            queue.requeue(path, replace(_read(path, job).reset(), after=after))
            report.queued[job.stage] += 1
            crash.point("plan_step")
            continue
        if state is not None:  # a stale done record: its outputs are gone
            path.unlink()
        report.queued[job.stage] += queue.enqueue(replace(job, after=after))
        crash.point("plan_step")
    return report


def _worth_retrying(rules, job: Job, needs, stuck) -> bool:
    """A dead letter is requeued without --retry-failed when the user has since changed a file it reads
    (a fixed style image or LoRA: the file's ctime is after the failure; ctime, as copies keep mtimes), or
    when it died only because a job it waited for did, and that one runs again."""
    last = job.last_error()
    if last.get("kind") == "dependency":
        return not any(k in stuck for k in needs)
    failed_at = last.get("at") or 0
    inputs = getattr(rules, "inputs", None)
    for path in inputs(job) if inputs else ():
        try:
            if os.stat(path).st_ctime > failed_at:
                return True
        except OSError:
            continue
    return False


def _read(path, fallback: Job) -> Job:
    try:
        return read_job(path)
    except (CorruptJob, FileNotFoundError):
        return fallback
