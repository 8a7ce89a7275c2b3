"""Where everything lives inside queue_dir/ (QUEUE.md §2). Paths only; no I/O but mkdir.

  tmp/                          in-progress writes (same filesystem as every target, so renames work)
  workers/<wid>.json            leases;  logs/<wid>.log  one log per worker
  gen/pending/<style>/<hh>/<id>.json   256 shards per style: a claim lists one small folder
  sty/pending/<style>/<id>.json        bounded by back-pressure, so unsharded
  <stage>/claimed/<wid>/<id>.json      the owner is part of the path
  <stage>/retry/<id>.json   <stage>/done/<hh>/<id>.json   <stage>/failed/<id>.json (corrupt/ quarantine)
  content/<id>.npy              the stage-1 latent handed to stage 2
"""
from pathlib import Path

STAGES = ("gen", "sty")
STATES = ("pending", "claimed", "retry", "done", "failed")


class Layout:
    def __init__(self, root):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.workers = self.root / "workers"
        self.logs = self.root / "logs"
        self.content = self.root / "content"
        self.manifest = self.root / "manifest.json"
        self.lock = self.root / "launcher.lock"
        self.holder = self.root / "launcher.json"

    def make(self):
        for d in (self.tmp, self.workers, self.logs, self.content):
            d.mkdir(parents=True, exist_ok=True)
        for stage in STAGES:
            for state in STATES:
                (self.root / stage / state).mkdir(parents=True, exist_ok=True)
        return self

    def state_dir(self, stage: str, state: str) -> Path:
        return self.root / stage / state

    def pending_dir(self, stage: str, style: str, jid: str) -> Path:
        base = self.root / stage / "pending" / style
        return base / jid[:2] if stage == "gen" else base

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

    def latent_path(self, jid: str) -> Path:
        return self.content / f"{jid}.npy"

    def lease_path(self, wid: str) -> Path:
        return self.workers / f"{wid}.json"

    def log_path(self, wid: str) -> Path:
        return self.logs / f"{wid}.log"
