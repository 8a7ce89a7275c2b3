"""Recovery at launch (docs/queue.md §4): make the queue consistent after a crash of anything.

Run by the launcher under its lock, before planning and before any worker starts: stop the workers a dead
launcher left running, give back every claimed job (a valid output completes it), drop leases and
half-written queue records, quarantine job files that do not parse, remove stray output temp files, and
move on jobs whose dependency finished while nobody was watching.
"""
import os
import shutil
import signal
import time
from pathlib import Path

from common.jobqueue import crash, lease
from common.jobqueue.job import CorruptJob, read_job
from common.jobqueue.queue import remove_files


def stop_leftover_workers(queue, grace: float) -> list:
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


def recover(queue, output_dirs, grace: float) -> list:
    """Returns messages for the user. `output_dirs`: where stages write (their temp files are stray)."""
    notes = []
    layout = queue.layout
    killed = stop_leftover_workers(queue, grace)
    if killed:
        notes.append(f"stopped {len(killed)} worker(s) left by a previous launcher")
    for stage in queue.stages:
        claimed = layout.state_dir(stage, "claimed")
        for wid in sorted(os.listdir(claimed)) if claimed.is_dir() else []:
            got = queue.reclaim(wid, counted=False, reason="launcher restarted; released unrun")
            if got:
                notes.append(f"reclaimed {len(got)} {stage} job(s) of {wid}")
    remove_files(layout.workers)
    stray = remove_files(layout.tmp)
    if stray:
        notes.append(f"removed {len(stray)} partial queue write(s) from {layout.tmp}")
    for stage in queue.stages:
        for state, jobs in queue.scan(stage).items():
            for path in jobs.values():
                try:
                    read_job(path)
                except CorruptJob as e:
                    queue.quarantine(stage, path, str(e))
                    notes.append(f"corrupt job file quarantined and re-planned: {e}")
    for folder in output_dirs:
        folder = Path(folder)
        if folder.is_dir():
            for tmp in folder.rglob(".*.tmp"):
                tmp.unlink()
                notes.append(f"removed stray temp file {tmp}")
    queue.sweep_blocked()
    return notes


OWN_FILES = ("tmp", "workers", "logs", "scratch", "handoff")


def foreign_entries(queue, former=()) -> list:
    """Entries of the queue folder whose names the queue never makes, nor the pipeline's earlier layouts
    (`former`, from the graph); a queue with a manifest may hold some: --fresh leaves them alone and says so."""
    lay = queue.layout
    ours = set(OWN_FILES) | set(queue.stages) | set(former) | {lay.lock.name, lay.holder.name, lay.manifest.name,
                                                                lay.identities.name, "README.md"}
    try:
        return sorted(name for name in os.listdir(lay.root) if name not in ours)
    except (FileNotFoundError, NotADirectoryError):
        return []


def clear_queue(queue, grace: float, former=()) -> list:
    """--fresh: delete what the queue made (jobs, leases, logs, working files, hand-offs), the manifest
    last; never the outputs, the lock, or a file the queue does not know (named in the returned notes).
    Workers a dead launcher left running are stopped first: their leases are what finds them, and they
    would go on writing old-settings outputs."""
    from common.jobqueue.manifest import read_manifest
    stop_leftover_workers(queue, grace)
    root = queue.layout.root
    own = set(OWN_FILES) | set(queue.stages) | set(read_manifest(queue).get("stages") or ()) | set(former)
    keep = {queue.layout.lock.name, queue.layout.holder.name, queue.layout.manifest.name,
            queue.layout.identities.name, "README.md"}  # identities: content hashes, true whatever the plan
    notes = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.name in keep:
            continue
        if entry.name in own and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)  # fd-based on Linux: a link inside is removed, never followed
            crash.point("fresh_step")
        else:
            notes.append(f"--fresh left {entry} alone: the queue did not make it")
    try:
        queue.layout.manifest.unlink()
    except FileNotFoundError:
        pass
    return notes
