"""Recorded attention features, keyed by layer, kind (q/k/v) and TIMESTEP VALUE.

The DDIM loop sets `clock.t` before every UNet call; processors read it to know under which key to record
or which record to inject. There are no counters: an extra UNet call, a split batch or a reused processor
cannot shift the alignment, as a step counter or matching records to layers by order would (docs/styleid.md §4),
and a missing key raises.
"""
from typing import Dict, Optional, Tuple


class StepClock:
    """The timestep of the UNet call in progress, shared by the loop and the processors."""

    def __init__(self):
        self.t: Optional[int] = None

    def now(self) -> int:
        if self.t is None:
            raise RuntimeError("a StyleID processor ran outside a DDIM loop (clock.t is unset)")
        return self.t


class MissingFeature(KeyError):
    """No record for this (layer, kind, t): a loop over different timesteps or layers than the recording."""


class FeatureStore:
    """{(layer, kind, t): Var}. K/V of a style are batch 1; Q of contents carries their batch."""

    def __init__(self):
        self._data: Dict[Tuple[str, str, int], object] = {}

    def put(self, layer: str, kind: str, t: int, value):
        self._data[(layer, kind, int(t))] = value

    def get(self, layer: str, kind: str, t: int):
        try:
            return self._data[(layer, kind, int(t))]
        except KeyError:
            have = sorted(k for (l, c, k) in self._data if l == layer and c == kind)
            raise MissingFeature(f"no recorded {kind!r} of {layer} at t={t} (recorded t: {have or 'none'})") from None

    def keys(self):
        return sorted(self._data)

    def layers(self):
        return sorted({layer for layer, _, _ in self._data})

    def timesteps(self):
        return sorted({t for _, _, t in self._data})

    def nbytes(self) -> int:
        return sum(int(v.nbytes) for v in self._data.values())

    def __len__(self):
        return len(self._data)
