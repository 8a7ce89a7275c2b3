"""The per-worker cache of style inversions: computed once per style, reused for all its content images.

A style's x_T and K/V cost `steps` UNet calls and, at 512² fp16 with 50 steps and six layers, 1.1 GiB
(docs/styleid.md §9); a bounded LRU keeps the `capacity` most recently used. The key names everything the
features depend on: the style image's bytes, the model (and LoRA), the size, the steps and the layers.
"""
import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Hashable, NamedTuple, Tuple


def file_hash(path) -> str:
    """SHA-256 of a file's bytes: a renamed or re-saved style image is the same style only if equal."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class StyleKey(NamedTuple):
    image_sha256: str
    model: str  # model path, dtype and LoRA (if any)
    size: Tuple[int, int]  # latent (h, w)
    steps: int
    layers: Tuple[str, ...]


class StyleCache:
    """A bounded LRU {StyleKey: StyleFeatures}; capacity 0 keeps nothing."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._entries: "OrderedDict[Hashable, object]" = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], object]):
        """The cached value for `key`, or `compute()` stored as the most recent entry."""
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        value = compute()
        if self.capacity > 0:
            self._entries[key] = value
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return value

    def __contains__(self, key) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def nbytes(self) -> int:
        return sum(v.nbytes() for v in self._entries.values())
