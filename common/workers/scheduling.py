"""Which stage a worker runs next: the GPU split, elastic home stages with back-pressure, single-GPU bursts.

The stage graph names the pair of stages these rules balance (`Graph.flow()`: the upstream stage that
makes work, gen, and the downstream one that consumes it, sty); the rules take it as a `Pair` of stage
names and answer with one of them. Pure functions
of the queue's counts (no I/O), so the worker loop and `benchmarks/scheduling.py` run exactly the same
rules. See docs/stage_graph.md §4.

Why these rules make the makespan near-ideal: every rule is work-conserving (a worker waits only when
no claimable job exists, or when upstream is blocked by back-pressure and no downstream job is claimable),
so the only losses are the pipeline's fill and drain and the stage switches. The backlog of downstream jobs
is held between 0 and `high`, around `low = n_workers`, so when upstream runs out there is about one
downstream job per worker to keep everyone busy while the last upstream jobs finish. Hysteresis keeps a
worker on a borrowed stage until the backlog has moved across half the band, so switches (an adapter swap or a
model load each) happen once per swing, not on every job.
"""
from __future__ import annotations

import math
from typing import NamedTuple


class Pair(NamedTuple):
    """The balanced pair of stages, by name: `up` makes the jobs `down` runs (gen and sty)."""
    up: str
    down: str


def split_gpus(n_gpus: int, gen_cost: float, sty_cost: float, producers: int | None = None) -> int:
    """Number of workers whose home stage is the upstream one, among n_gpus >= 2: its share of the work,
    rounded.

    `producers` (from --producers) overrides the split by the configured costs (stages.*_cost). Elastic
    home stages correct a rounding error at run time, so the split only sets who switches.
    """
    if isinstance(n_gpus, bool) or not isinstance(n_gpus, int) or n_gpus < 2:
        raise ValueError(f"split_gpus needs at least 2 GPUs, got {n_gpus!r}; one GPU runs BurstPolicy")
    if producers is not None:
        if isinstance(producers, bool) or not isinstance(producers, int) or not 0 < producers < n_gpus:
            raise ValueError(f"--producers must be an integer from 1 to {n_gpus - 1} for {n_gpus} GPUs, "
                             f"not {producers!r}")
        return producers
    for name, cost in (("gen_cost", gen_cost), ("sty_cost", sty_cost)):
        if not (isinstance(cost, (int, float)) and math.isfinite(cost) and cost > 0):
            raise ValueError(f"{name} must be a positive number of seconds per image, not {cost!r}")
    share = gen_cost / (gen_cost + sty_cost)
    return min(max(math.floor(n_gpus * share + 0.5), 1), n_gpus - 1)


def backlog_marks(n_workers: int) -> tuple[int, int]:
    """(low, high) marks for the number of pending downstream jobs: low keeps each worker fed, high bounds disk
    use."""
    return n_workers, 2 * n_workers + 2


def choose_stage(pair: Pair, home: str, current: str | None, backlog: int, up_left: bool, down_left: bool,
                 n_workers: int) -> str | None:
    """The stage this worker should claim from next (a name in `pair`), or None to wait and poll again.

    `home` is the worker's home stage; `backlog` is the number of pending `pair.down` jobs;
    `up_left`/`down_left` say whether a job of that stage is claimable now; `current` is the stage the
    worker ran last (None at start). Rules, first match wins:
      1. backlog >= high: down (back-pressure: nobody takes up, so the wait is None if no down is claimable);
      2. one stage has nothing claimable: the other;
      3. backlog == 0: up (the downstream workers would starve otherwise);
      4. 0 < backlog < high: the home stage, except that a worker on a borrowed stage keeps it until the
         backlog crosses `low` (an upstream worker lent downstream returns at backlog <= low, a downstream
         worker lent upstream returns at backlog >= low). Both releases sit at `low`, the middle of the
         band, so the backlog swings around one job per worker and each swing costs each borrowed worker
         two switches.
    """
    up, down = pair
    low, high = backlog_marks(n_workers)
    if backlog >= high:
        return down if down_left else None
    if not (up_left and down_left):
        return up if up_left else down if down_left else None
    if backlog <= 0:
        return up
    if current == down and home == up and backlog > low:
        return down
    if current == up and home == down and backlog < low:
        return up
    return home


class BurstPolicy:
    """One worker doing both stages (single GPU, CPU): run `burst` upstream jobs (content images), then
    downstream ones until the backlog is 0, and repeat. Bursts amortise the stage switch while keeping the
    content backlog (disk use, and latency to the first finished image) at about `burst`."""

    def __init__(self, pair: Pair, burst: int):
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"scheduling.burst must be a positive integer, not {burst!r}")
        self.pair, self.burst = pair, burst
        self._made = 0  # upstream jobs handed out in the current burst
        self._phase = pair.up

    def next_stage(self, backlog: int, up_left: bool, down_left: bool) -> str | None:
        up, down = self.pair
        if self._phase == up and (self._made >= self.burst or not up_left):
            self._phase = down
        if self._phase == down and (backlog <= 0 or not down_left):
            if not up_left:
                return down if down_left else None
            self._phase, self._made = up, 0
        if self._phase == up:
            self._made += 1
            return up
        return down
