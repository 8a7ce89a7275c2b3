"""Makespan of the real scheduling policy (common/workers/scheduling.py) in a discrete-event simulation.

N workers run styles x prompts tasks; each task is a gen job (content image) then a sty job (StyleID)
that can start only after its gen job. Stage durations are stand-ins with the measured cost ratio
(gen ~ half a StyleID transfer) and a small seeded jitter, fixed per job so every policy and N sees the
same work. A worker that changes stage pays `--switch` (adapter swap), a gen job of a new style pays
`--lora-swap`; both are charged to the makespan, not to the ideal (= total stage work / N; with training, the
larger of that and the bounds training imposes: `Work.ideal`).
Compared in the same run: a fixed split of 1 gen : 3 sty home stages on 4 GPUs (no elastic home stages,
unbounded queue). An idle worker re-asks the policy at the next completion (the real one polls at 0.2-2 s).

With training (the stage graph's `train` stage, `lora.missing: train`), every style first needs a LoRA
job of `--train-ratio` sty-job units (a published figure: about 8.5 minutes per style at 500 steps on an
RTX 4090, against a few seconds per StyleID image) and its gen jobs become claimable when it lands. The
real worker takes stages outside the balanced gen/sty pair first (common/workers/worker.py); the
baseline trains every style before any generation starts (a barrier).

    python benchmarks/scheduling.py --json scheduling.json            # N = 1, 2, 4, 8 and 16, 32, 64 (a cluster)
    python benchmarks/scheduling.py --workers 8,16,32,64 --prompts 100   # a cluster-sized dataset
"""
from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.workers.scheduling import BurstPolicy, Pair, backlog_marks, choose_stage, split_gpus  # noqa: E402

GEN, STY = PAIR = Pair("gen", "sty")

TRAIN = "train"  # the stage taken before the balanced pair (pipeline_stages() checks the graph agrees)


@dataclass(frozen=True)
class Work:
    """The jobs: per-task stage durations, fixed by the seed; `train` per style (empty: LoRAs exist)."""
    styles: int
    prompts: int
    ratio: float
    gen: tuple[float, ...]
    sty: tuple[float, ...]
    train: tuple[float, ...] = ()

    @classmethod
    def make(cls, styles: int = 28, prompts: int = 25, ratio: float = 0.5, jitter: float = 0.1, seed: int = 0,
             train_ratio: float = 0.0):
        rng = random.Random(seed)
        n = styles * prompts
        gen = tuple(ratio * rng.uniform(1 - jitter, 1 + jitter) for _ in range(n))
        sty = tuple(rng.uniform(1 - jitter, 1 + jitter) for _ in range(n))
        train = tuple(train_ratio * rng.uniform(1 - jitter, 1 + jitter) for _ in range(styles)) if train_ratio else ()
        return cls(styles, prompts, ratio, gen, sty, train)

    def style_of(self, task: int) -> int:
        return task // self.prompts

    def total(self) -> float:
        return sum(self.gen) + sum(self.sty) + sum(self.train)

    def ideal(self, n_workers: int) -> float:
        """A lower bound on any schedule's makespan: total work / N, and with training two more. No style's
        content can start before its LoRA lands (longest LoRA + that style's quickest task), and until the
        first LoRA lands only training runs, on at most min(N, styles) workers."""
        bound = self.total() / n_workers
        if self.train:
            chain = [min(self.gen[t] + self.sty[t] for t in range(s * self.prompts, (s + 1) * self.prompts))
                     for s in range(self.styles)]
            first = min(self.train)
            bound = max(bound, max(t + c for t, c in zip(self.train, chain)),
                        first + (self.total() - min(n_workers, self.styles) * first) / n_workers)
        return bound


def pipeline_stages() -> tuple[list[str], str, str]:
    """(stages taken first, upstream, downstream) of the declared graph when LoRAs are trained."""
    from common.config import load_config
    from common.graph import default_graph
    graph = default_graph(load_config(None, {"lora.missing": "train"}))
    up, down = graph.flow()
    first = [s for s in graph.stages if s not in (up, down)]
    if any(f not in graph.spec(up).needs for f in first):
        raise RuntimeError(f"the simulation models {first} as gating {up}; the graph says otherwise")
    return first, up, down


@dataclass
class Result:
    policy: str
    n_workers: int
    producers: int
    makespan: float
    ideal: float
    over_ideal: float
    switches: int
    lora_swaps: int
    max_backlog: int
    bound: int  # the backlog the policy aims to stay near: `high` (elastic), `burst` (single worker)


def simulate(work: Work, n_workers: int, policy: str = "elastic", burst: int = 8, producers: int | None = None,
             switch: float = 0.1, lora_swap: float = 0.05, hysteresis: bool = True, barrier: bool = False) -> Result:
    """Run every task to completion; policy is "elastic" (choose_stage), "fixed" (home stages only, a
    fixed split) or "burst" (BurstPolicy, one worker). With training, any free worker takes a train job
    first (as the real worker does) and a style's gen jobs are released when its LoRA lands, or, with
    `barrier`, when every LoRA has. Raises if the policy stalls with work left."""
    if policy == "burst" and n_workers != 1:
        raise ValueError("the burst policy runs one worker")
    n_prod = 0 if policy == "burst" else split_gpus(n_workers, work.ratio, 1.0, producers)
    homes = [GEN if w < n_prod else STY for w in range(n_workers)]
    bursts = [BurstPolicy(PAIR, burst) for _ in range(n_workers)] if policy == "burst" else None
    gen_pending = [deque(range(s * work.prompts, (s + 1) * work.prompts)) for s in range(work.styles)]
    train_pending = deque(range(len(work.train)))
    released = [not work.train] * work.styles  # a style's gen jobs are claimable once its LoRA exists
    trained = 0
    gen_count = work.styles * work.prompts if not work.train else 0  # claimable gen jobs
    sty_pending: deque[int] = deque()
    current: list[str | None] = [None] * n_workers
    lora: list[int | None] = [None] * n_workers
    free = set(range(n_workers))
    events: list[tuple[float, int, int, str, int]] = []  # (finish, seq, worker, stage, task)
    seq = done = switches = lora_swaps = max_backlog = 0
    now = 0.0

    def decide(w: int) -> str | None:
        if train_pending:
            return TRAIN
        gen_left, sty_left, backlog = gen_count > 0, bool(sty_pending), len(sty_pending)
        if policy == "burst":
            return bursts[w].next_stage(backlog, gen_left, sty_left)
        if policy == "fixed":
            return homes[w] if (gen_left if homes[w] == GEN else sty_left) else None
        cur = current[w] if hysteresis else homes[w]
        return choose_stage(PAIR, homes[w], cur, backlog, gen_left, sty_left, n_workers)

    def claim_gen(w: int) -> int:
        """LoRA affinity: stay on this worker's style while it has jobs, else take the fullest style."""
        nonlocal gen_count
        s = lora[w]
        if s is None or not gen_pending[s] or not released[s]:
            s = max((i for i in range(work.styles) if released[i]), key=lambda i: len(gen_pending[i]))
        gen_count -= 1
        return gen_pending[s].popleft()

    while True:
        for w in sorted(free):
            stage = decide(w)
            if stage is None:
                continue
            if stage == TRAIN:
                task = train_pending.popleft()
                cost = work.train[task]
            elif stage == GEN:
                if gen_count == 0:
                    raise RuntimeError(f"policy {policy} chose gen with no gen job left")
                task = claim_gen(w)
                cost = work.gen[task]
                if lora[w] != work.style_of(task):
                    lora[w] = work.style_of(task)
                    lora_swaps += 1
                    cost += lora_swap
            else:
                if not sty_pending:
                    raise RuntimeError(f"policy {policy} chose sty with no sty job pending")
                task = sty_pending.popleft()
                cost = work.sty[task]
            if current[w] is not None and current[w] != stage:
                switches += 1
                cost += switch
            current[w] = stage
            free.discard(w)
            seq += 1
            heapq.heappush(events, (now + cost, seq, w, stage, task))
        if not events:
            break
        now = events[0][0]
        while events and events[0][0] == now:
            _, _, w, stage, task = heapq.heappop(events)
            free.add(w)
            if stage == TRAIN:
                trained += 1
                for s in ([task] if not barrier else range(work.styles) if trained == len(work.train) else []):
                    released[s] = True
                    gen_count += len(gen_pending[s])
            elif stage == GEN:
                sty_pending.append(task)
                max_backlog = max(max_backlog, len(sty_pending))
            else:
                done += 1
    if done != work.styles * work.prompts:
        raise RuntimeError(f"policy {policy} stalled at {done} of {work.styles * work.prompts} tasks")
    ideal = work.ideal(n_workers)
    label = {"fixed": f"fixed {n_prod}:{n_workers - n_prod}", "burst": f"burst {burst}",
             "elastic": "elastic" if hysteresis else "elastic, no hysteresis"}[policy]
    if work.train:
        label += ", train all first" if barrier else ", train first"
    bound = burst if policy == "burst" else backlog_marks(n_workers)[1]
    return Result(label, n_workers, n_prod, now, ideal, now / ideal, switches, lora_swaps, max_backlog, bound)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--workers", default="1,2,4,8,16,32,64", help="comma-separated worker counts (GPUs; beyond "
                   "one machine's, a Ray cluster's)")
    p.add_argument("--ratio", type=float, default=0.5, help="gen duration / sty duration")
    p.add_argument("--styles", type=int, default=28)
    p.add_argument("--prompts", type=int, default=25)
    p.add_argument("--jitter", type=float, default=0.1, help="durations drawn from mean*U(1-j, 1+j)")
    p.add_argument("--switch", type=float, default=0.1, help="cost of changing stage, in sty-job units")
    p.add_argument("--lora-swap", type=float, default=0.05, help="cost of a gen job of a new style")
    p.add_argument("--burst", type=int, default=8, help="single-worker burst (scheduling.burst)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-ratio", type=float, default=150.0,
                   help="one style's LoRA training / one sty job (0: skip the training runs)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    work = Work.make(a.styles, a.prompts, a.ratio, a.jitter, a.seed)
    costs = dict(switch=a.switch, lora_swap=a.lora_swap)
    rows = []
    for n in (int(x) for x in a.workers.split(",")):
        rows.append(simulate(work, n, "burst" if n == 1 else "elastic", burst=a.burst, **costs))
    fixed = simulate(work, 4, "fixed", producers=1, **costs)
    no_hyst = simulate(work, 4, "elastic", hysteresis=False, **costs)
    elastic4 = next((r for r in rows if r.n_workers == 4), None) or simulate(work, 4, **costs)
    rows += [fixed, no_hyst]

    print(f"{a.styles} styles x {a.prompts} prompts, gen/sty = {a.ratio}, jitter {a.jitter}, "
          f"switch {a.switch}, LoRA swap {a.lora_swap}, burst {a.burst}, seed {a.seed}")
    print(f"{'policy':<24}{'N':>3}{'prod':>5}{'makespan':>10}{'ideal':>9}{'/ideal':>8}"
          f"{'switches':>9}{'LoRA':>6}{'backlog':>8}{'bound':>6}")
    for r in rows:
        print(f"{r.policy:<24}{r.n_workers:>3}{r.producers:>5}{r.makespan:>10.2f}{r.ideal:>9.2f}"
              f"{r.over_ideal:>8.4f}{r.switches:>9}{r.lora_swaps:>6}{r.max_backlog:>8}{r.bound:>6}")
    ours = rows[:-2]  # burst at N=1, elastic above
    figures = {f"makespan_over_ideal_n{r.n_workers}": round(r.over_ideal, 4) for r in ours}
    figures["makespan_over_ideal_worst"] = round(max(r.over_ideal for r in ours), 4)
    figures["fixed_1to3_over_ideal_n4"] = round(fixed.over_ideal, 4)
    figures["speedup_vs_fixed_1to3_n4"] = round(fixed.makespan / elastic4.makespan, 4)
    figures["switches_n4"] = elastic4.switches
    figures["switches_no_hysteresis_n4"] = no_hyst.switches
    burst_rows = [r for r in ours if r.n_workers == 1]
    if burst_rows:
        figures["burst_max_backlog_n1"] = burst_rows[0].max_backlog
    print(f"worst makespan/ideal {figures['makespan_over_ideal_worst']:.4f} (target <= 1.05); "
          f"fixed 1:3 on 4: {fixed.over_ideal:.4f}x ideal; "
          f"elastic speedup over it {figures['speedup_vs_fixed_1to3_n4']:.3f}x; "
          f"{time.perf_counter() - t0:.2f} s")
    if a.train_ratio > 0:
        first, up, down = pipeline_stages()
        trained = Work.make(a.styles, a.prompts, a.ratio, a.jitter, a.seed, train_ratio=a.train_ratio)
        print(f"\nwith {'+'.join(first)} -> {up} -> {down}: every style's LoRA trained first "
              f"({a.train_ratio:g} sty-job units each); baseline: all training before any generation")
        for n in (int(x) for x in a.workers.split(",")):
            ours_t = simulate(trained, n, "burst" if n == 1 else "elastic", burst=a.burst, **costs)
            barrier = simulate(trained, n, "burst" if n == 1 else "elastic", burst=a.burst, barrier=True, **costs)
            rows += [ours_t, barrier]
            figures[f"train_makespan_over_ideal_n{n}"] = round(ours_t.over_ideal, 4)
            figures[f"train_all_first_over_ideal_n{n}"] = round(barrier.over_ideal, 4)
            for r in (ours_t, barrier):
                print(f"{r.policy:<32}{r.n_workers:>3}{r.makespan:>10.2f}{r.ideal:>9.2f}{r.over_ideal:>8.4f}")
        figures["train_makespan_over_ideal_worst"] = round(max(v for k, v in figures.items()
                                                             if k.startswith("train_makespan_over_ideal_n")), 4)
        print(f"with training, worst makespan/ideal {figures['train_makespan_over_ideal_worst']:.4f} (target <= 1.05)")
    if a.json:
        a.json.write_text(json.dumps({**figures, "params": vars(a) | {"json": str(a.json)},
                                      "runs": [asdict(r) for r in rows]}, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
