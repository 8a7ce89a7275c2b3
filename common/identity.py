"""The identity of an input file: a hash of its bytes, read again only when the file's stat changes.

Identity is content (docs/queue.md §11): a copied, moved or touched file with the same bytes is the same
input, and any other bytes are another input. Hashing a model's gigabytes at every launch would cost
seconds to minutes, so a hash is remembered with the stat it was taken under (size, mtime_ns, inode,
ctime_ns, device) and reused while that stat is unchanged: writing a file changes its ctime (the kernel
sets it; no tool can set it back), so a stat that did not change means bytes that did not change.
The launcher keeps these in the queue folder's `identities.json` (workers read it), so a 5 GB model is
read once, not once per launch and worker. Jittor-free.
"""
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterable, Optional

from common.atomic import write_bytes

# The parts of a diffusers folder the engine reads (common/sd/model_folder.py).
MODEL_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_CHUNK = 1 << 20


def data_identity(data: bytes) -> str:
    """The identity a file holding `data` has (what `content_hash` reads from disk)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()[:32]


def content_hash(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:32]


def combined(parts: Iterable) -> str:
    """One identity for several (name, identity) pairs: a folder of images, a model's files."""
    return "sha256:" + hashlib.sha256(json.dumps(list(parts)).encode()).hexdigest()[:32]


def _stamp(st: os.stat_result) -> list:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev]


class Identities:
    """Content identities of files and folders, remembered by stat (optionally in a JSON file)."""

    def __init__(self, store: Optional[Path] = None):
        self.store = Path(store) if store else None
        self.known: Dict[str, list] = {}  # real path -> stamp + [identity]
        self.dirty = False
        self._frozen: Optional[dict] = None  # while planning: {path: identity}, each file stat'ed once
        if self.store is not None:
            try:
                data = json.loads(self.store.read_bytes())
                self.known = {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 6}
            except (OSError, ValueError, AttributeError):
                pass

    @contextlib.contextmanager
    def frozen(self):
        """Inside, every path is looked at once: planning sees one state of the inputs, at one stat each."""
        self._frozen = {}
        try:
            yield self
        finally:
            self._frozen = None

    def of(self, path) -> Optional[str]:
        """The identity of a file, or of a folder (its visible files, by name); None when missing."""
        if path is None:
            return None
        if self._frozen is not None:
            key = str(path)
            if key not in self._frozen:
                self._frozen[key] = self._of(Path(path))
            return self._frozen[key]
        return self._of(Path(path))

    def _of(self, path: Path) -> Optional[str]:
        if path.is_dir():
            return combined((p.name, self._file(p)) for p in sorted(path.iterdir())
                            if not p.name.startswith(".") and p.is_file())
        return self._file(path)

    def _file(self, path: Path) -> Optional[str]:
        try:
            real = os.path.realpath(path)
            stamp = _stamp(os.stat(real))
        except OSError:
            return None
        known = self.known.get(real)
        if known is not None and known[:5] == stamp:
            return known[5]
        try:
            identity = content_hash(real)
        except OSError:
            return None
        self.known[real] = stamp + [identity]
        self.dirty = True
        return identity

    def model(self, path_or_repo_id) -> Optional[str]:
        """The identity of a model: a single-file checkpoint's content, or a folder's model_index.json and
        every file of the parts the engine reads."""
        from common.sd.model_folder import resolve_model_folder
        from common.sd.single_file import is_single_file
        if self._frozen is not None and ("model", str(path_or_repo_id)) in self._frozen:
            return self._frozen[("model", str(path_or_repo_id))]
        if is_single_file(path_or_repo_id):
            identity = self._file(Path(str(path_or_repo_id)).expanduser())
        else:
            try:
                folder = resolve_model_folder(path_or_repo_id)
            except (OSError, ValueError):
                return None
            files = [folder / "model_index.json"]
            for part in MODEL_PARTS:
                if (folder / part).is_dir():
                    files += sorted(p for p in (folder / part).rglob("*") if p.is_file())
            identity = combined((str(p.relative_to(folder)), self._file(p)) for p in files)
        if self._frozen is not None:
            self._frozen[("model", str(path_or_repo_id))] = identity
        return identity

    def save(self):
        """Write what was learnt to the store (atomically; a lost write costs a re-hash, nothing else)."""
        if self.store is not None and self.dirty:
            write_bytes(self.store, json.dumps(self.known).encode(), fsync=False)
            self.dirty = False
