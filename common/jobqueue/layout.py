"""Where everything lives inside queue_dir/ (docs/queue.md §2). Paths only; no I/O but mkdir.

  manifest.json  launcher.lock  launcher.json     the plan's settings; the one-launcher lock and its holder
  identities.json                       input files' content hashes, by stat (kept by --fresh)
  tmp/                                  in-progress queue writes (same filesystem as the job folders)
  workers/<wid>.json   logs/<wid>.log   leases and worker logs
  scratch/<stage>/<id>/                 a job's working files (checkpoints), kept across its attempts
  handoff/<stage>/<id>.<ext>            a job's output for a later stage, removed once that one is done
  <stage>/pending/<group>/[<hh>/]<id>.json   claimable; a sharded stage splits each group 256 ways
  <stage>/blocked/<key>/<id>.json       waiting for the job `key` (the first of its `after` not done)
  <stage>/claimed/<wid>/<id>.json       the owner is part of the path
  <stage>/retry/<id>.json   <stage>/done/<hh>/<id>.json   <stage>/failed/<id>.json (+ corrupt/ quarantine)
"""
import os
from pathlib import Path
from typing import List, Mapping

STATES = ("pending", "blocked", "claimed", "retry", "done", "failed")
LIVE = ("pending", "blocked", "claimed", "retry")  # not finished: the run goes on while any exists


class Layout:
    def __init__(self, root, sharded: Mapping[str, bool]):
        self.root = Path(root)
        self.sharded = dict(sharded)  # {stage: whether its pending groups are split into 256 shards}
        self.stages = tuple(self.sharded)
        self.tmp = self.root / "tmp"
        self.workers = self.root / "workers"
        self.logs = self.root / "logs"
        self.scratch = self.root / "scratch"
        self.handoff = self.root / "handoff"
        self.manifest = self.root / "manifest.json"
        self.lock = self.root / "launcher.lock"
        self.holder = self.root / "launcher.json"
        self.identities = self.root / "identities.json"  # input files' content hashes by stat (common/identity.py)

    def links(self) -> List[Path]:
        """Every symbolic link inside the queue folder (the folder itself may be one). The queue makes none;
        recovery and --fresh delete what lies here, so a planted link would let them delete elsewhere."""
        found, stack = [], [str(self.root)]
        while stack:
            try:
                it = os.scandir(stack.pop())
            except (FileNotFoundError, NotADirectoryError):
                continue
            with it:
                for e in it:
                    if e.is_symlink():
                        found.append(Path(e.path))
                    elif e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
        return sorted(found)

    def own_folders(self) -> tuple:
        """The folders the queue makes besides each stage's (--fresh removes them, with the stages')."""
        return self.tmp, self.workers, self.logs, self.scratch, self.handoff

    def kept_names(self) -> set:
        """Entries --fresh never removes: the lock and its holder (held by the launcher), the manifest
        (removed last, by itself), the input files' content hashes (true whatever the plan) and the
        folder's README.md."""
        return {self.lock.name, self.holder.name, self.manifest.name, self.identities.name, "README.md"}

    def make(self):
        for d in self.own_folders():
            d.mkdir(parents=True, exist_ok=True)
        for stage in self.stages:
            for state in STATES:
                (self.root / stage / state).mkdir(parents=True, exist_ok=True)
        return self

    def state_dir(self, stage: str, state: str) -> Path:
        return self.root / stage / state

    def pending_dir(self, stage: str, group: str, jid: str) -> Path:
        base = self.root / stage / "pending" / group
        return base / jid[:2] if self.sharded[stage] else base

    def blocked_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / "blocked" / key

    def claimed_dir(self, stage: str, wid: str) -> Path:
        return self.root / stage / "claimed" / wid

    def retry_path(self, stage: str, jid: str) -> Path:
        return self.root / stage / "retry" / f"{jid}.json"

    def done_path(self, stage: str, jid: str) -> Path:
        return self.root / stage / "done" / jid[:2] / f"{jid}.json"

    def failed_path(self, stage: str, jid: str) -> Path:
        return self.root / stage / "failed" / f"{jid}.json"

    def corrupt_dir(self, stage: str) -> Path:
        return self.root / stage / "failed" / "corrupt"

    def scratch_dir(self, stage: str, jid: str) -> Path:
        return self.scratch / stage / jid

    def handoff_path(self, stage: str, jid: str, suffix: str) -> Path:
        return self.handoff / stage / f"{jid}{suffix}"

    def lease_path(self, wid: str) -> Path:
        return self.workers / f"{wid}.json"

    def log_path(self, wid: str) -> Path:
        return self.logs / f"{wid}.log"
