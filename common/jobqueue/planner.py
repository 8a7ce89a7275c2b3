"""From the dataset to jobs, on every start (QUEUE.md §1.5): the output files are the truth.

`scan_dataset` reads DATASET/STYLE/{images/*, prompt.json} into Tasks; `recover` makes the queue
consistent after any crash (dead workers' jobs, tmp/ files, corrupt job files, stray output temp files);
`plan` queues exactly what is missing: a task whose final PNG is complete is skipped, one whose content
(latent + content PNG) exists goes straight to stage 2, the rest start at stage 1. Planning twice
enqueues nothing new. All of it runs under the launcher lock, before any worker starts.
"""
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.atomic import png_is_complete, write_bytes
from common.config import RunConfig, require_path
from common.jobqueue import lease
from common.jobqueue.jobs import CorruptJob, job_id, new_job, read_job
from common.jobqueue.layout import STAGES
from common.jobqueue.queue import Queue, outputs_ok
from common.naming import prompt_names
from common.stage import Task
from common.style_files import IMAGE_SUFFIXES, lora_path, missing_lora_message, style_image_path

MANIFEST_VERSION = 1
KEEP_ON_FRESH = {"launcher.lock", "launcher.json", "README.md"}


class DatasetError(ValueError):
    """A dataset problem; one line naming the file and the fix."""


class ManifestError(ValueError):
    """The queue was planned with other pixel settings."""


def read_prompts(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing; write the style's prompts as {{\"0\": \"Dolphin\", ...}}") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e}); fix the file") from None
    if not isinstance(data, dict) or not data:
        raise DatasetError(f"{path}: expected a non-empty object like {{\"0\": \"Dolphin\", ...}}")
    for key, prompt in data.items():
        if not isinstance(prompt, str) or not prompt.strip():
            raise DatasetError(f"{path}: prompt {key!r} must be a non-empty string, not {prompt!r}")
    order = sorted(data, key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))
    return {k: data[k] for k in order}


def scan_dataset(config: RunConfig, queue: Queue) -> list:
    """Every (style, prompt) task of the dataset, in style then prompt.json order."""
    root = require_path(config.dataset, "dataset", config.source).resolve()
    out = Path(config.output).resolve()
    styles = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not styles:
        raise DatasetError(f"{root}: no style folders; expected {root}/STYLE/images/* and STYLE/prompt.json")
    tasks = []
    cfg = config.pixel_hash()
    for style_dir in styles:
        images = style_dir / "images"
        if not images.is_dir() or not any(p.suffix.lower() in IMAGE_SUFFIXES for p in images.iterdir()):
            raise DatasetError(f"{images}: no images; put the style's reference images (PNG/JPEG) there")
        check_style_files(config, style_dir)
        prompts = read_prompts(style_dir / "prompt.json")
        names = prompt_names(prompts, str(style_dir / "prompt.json"))
        style = style_dir.name
        for key, prompt in prompts.items():
            jid = job_id(style, prompt, config.producer.seed, cfg)
            name = names[key]
            tasks.append(Task(id=jid, style=style, prompt=prompt, name=name, seed=config.producer.seed,
                              style_dir=style_dir, content_png=out / style / "content" / f"{name}.png",
                              content_latent=queue.layout.latent_path(jid).resolve(),
                              output_png=out / style / f"{name}.png"))
    return tasks


def check_style_files(config: RunConfig, style_dir: Path):
    """The style image StyleID will use, and the LoRA when a missing one is an error: checked at launch."""
    try:
        style_image_path(style_dir, config.consumer.style_image)
    except FileNotFoundError as e:
        raise DatasetError(str(e)) from None
    if config.lora.missing == "error" and lora_path(config, style_dir.name) is None:
        raise DatasetError(missing_lora_message(config, style_dir.name))


# -- manifest ---------------------------------------------------------------------------------------------
def check_manifest(queue: Queue, cfg_hash: str):
    """Refuse a queue planned with other pixel settings (results would mix)."""
    path = queue.layout.manifest
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text()).get("cfg_hash")
    except (OSError, ValueError, AttributeError):
        old = None
    if old != cfg_hash:
        raise ManifestError(f"{path}: this queue was planned with other pixel settings (cfg_hash {old} != "
                            f"{cfg_hash}); rerun with --fresh to re-plan (outputs are kept), or restore the config")


def write_manifest(queue: Queue, cfg_hash: str, n_tasks: int):
    data = {"v": MANIFEST_VERSION, "cfg_hash": cfg_hash, "tasks": n_tasks, "planned_at": time.time()}
    write_bytes(queue.layout.manifest, json.dumps(data, indent=1).encode(), fsync=queue.fsync)


def clear_queue(queue: Queue, grace: float):
    """--fresh: delete everything in queue_dir (jobs, leases, logs, hand-off latents, manifest) except
    the launcher lock and README. Never touches the outputs. Workers a dead launcher left running are
    stopped first: their leases are what finds them, and they would go on writing old-settings outputs."""
    stop_leftover_workers(queue, grace)
    for entry in queue.layout.root.iterdir():
        if entry.name in KEEP_ON_FRESH:
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


# -- recovery ---------------------------------------------------------------------------------------------
def stop_leftover_workers(queue: Queue, grace: float) -> list:
    """Terminate workers of a dead launcher that still run (matched by host, boot and start time)."""
    alive = []
    for path in queue.layout.workers.glob("*.json"):
        info = lease.read(path)
        if info and info.get("phase") != "exited" and lease.alive(info):
            alive.append(info)
            os.kill(int(info["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [i for i in alive if lease.alive(i)]
    for info in alive:
        os.kill(int(info["pid"]), signal.SIGKILL)
    while any(lease.alive(i) for i in alive):
        time.sleep(0.02)
    return alive


def recover(queue: Queue, config: RunConfig, grace: float) -> list:
    """Make the queue consistent after a crash of anything; returns messages for the user."""
    notes = []
    layout = queue.layout
    killed = stop_leftover_workers(queue, grace)
    if killed:
        notes.append(f"stopped {len(killed)} worker(s) left by a previous launcher")
    for stage in STAGES:
        claimed = layout.state_dir(stage, "claimed")
        for wid in sorted(os.listdir(claimed)) if claimed.exists() else []:
            got = queue.reclaim(wid, counted=False, reason="launcher restarted; released unrun")
            if got:
                notes.append(f"reclaimed {len(got)} {stage} job(s) of {wid}")
    for path in layout.workers.glob("*"):
        path.unlink()
    stray = list(layout.tmp.iterdir()) if layout.tmp.exists() else []
    for path in stray:
        path.unlink()
    if stray:
        notes.append(f"removed {len(stray)} partial queue write(s) from {layout.tmp}")
    for stage in STAGES:
        for state, jobs in queue.scan(stage).items():
            for jid, path in jobs.items():
                try:
                    read_job(path)
                except CorruptJob as e:
                    queue.quarantine(stage, path, str(e))
                    notes.append(f"corrupt job file quarantined and re-planned: {e}")
    out = Path(config.output)
    if out.exists():
        for tmp in out.rglob(".*.tmp"):
            tmp.unlink()
            notes.append(f"removed stray temp file {tmp}")
    return notes


# -- planning ---------------------------------------------------------------------------------------------
@dataclass
class PlanReport:
    total: int = 0
    finished: int = 0  # final PNG complete: skipped
    gen_queued: int = 0
    sty_queued: int = 0  # content already there: straight to stage 2
    in_queue: int = 0  # already pending, retrying or claimed
    failed: list = field(default_factory=list)  # dead letters left alone (see --retry-failed)
    notes: list = field(default_factory=list)


def _state(scan: dict, jid: str):
    return next((s for s, ids in scan.items() if jid in ids), None)


def plan(queue: Queue, tasks: list, max_attempts: int, retry_failed: bool = False) -> PlanReport:
    """Queue exactly what is missing for `tasks`, given the outputs on disk and the queue's state."""
    report = PlanReport(total=len(tasks))
    scans = {s: queue.scan(s) for s in STAGES}
    live = ("pending", "retry", "claimed")
    for t in tasks:
        states = {s: _state(scans[s], t.id) for s in STAGES}
        probe = new_job(t, "gen", max_attempts)
        if t.output_png.exists() and not png_is_complete(t.output_png):
            t.output_png.unlink()
            report.notes.append(f"truncated output {t.output_png} removed; regenerating")
        if png_is_complete(t.output_png):
            report.finished += 1
            for s in STAGES:  # nothing left to do: close any job still waiting
                if states[s] in ("pending", "retry"):
                    queue.move(scans[s][states[s]][t.id], queue.layout.done_path(s, t.id))
            continue
        failed = [s for s in STAGES if states[s] == "failed"]
        if failed and not retry_failed:
            report.failed.append((failed[0], t.id, t.prompt))
            continue
        for s in failed:
            job = read_job(scans[s]["failed"][t.id])
            job.update(attempts=0, not_before=None, owner=None, solo=False)
            queue.rewrite(scans[s]["failed"][t.id], job)
            queue.move(scans[s]["failed"][t.id], queue.pending_path(job))
            states[s] = "pending"
        if outputs_ok("gen", probe):
            if states["sty"] in live:
                report.in_queue += 1
                continue
            if states["sty"] == "done":
                scans["sty"]["done"][t.id].unlink()  # a done record without its output is stale
            if states["gen"] in ("pending", "retry"):
                queue.move(scans["gen"][states["gen"]][t.id], queue.layout.done_path("gen", t.id))
            report.sty_queued += queue.enqueue(new_job(t, "sty", max_attempts))
            continue
        if t.content_png.exists() and not png_is_complete(t.content_png):
            t.content_png.unlink()
            report.notes.append(f"truncated content image {t.content_png} removed; regenerating")
        if states["sty"] in ("pending", "retry", "done"):  # its hand-off latent is gone (a done record
            scans["sty"][states["sty"]][t.id].unlink()    # without its output is stale): stage 1 reruns
        if states["gen"] in live:
            report.in_queue += 1
            continue
        if states["gen"] == "done":
            scans["gen"]["done"][t.id].unlink()
        report.gen_queued += queue.enqueue(new_job(t, "gen", max_attempts))
    return report
