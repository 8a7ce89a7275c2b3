"""The scheduling policy: GPU split, back-pressure, elastic home stages, hysteresis, single-GPU bursts, makespan."""
import importlib.util
import sys
from pathlib import Path

import pytest

from common.workers.scheduling import BurstPolicy, Pair, backlog_marks, choose_stage, split_gpus

GEN, STY = PAIR = Pair("gen", "sty")

ROOT = Path(__file__).resolve().parents[1]


def load_sim():
    """The simulator lives in the benchmark script; dataclasses need the module registered to load it."""
    name = "benchmarks_scheduling"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "scheduling.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


# split_gpus

@pytest.mark.parametrize("n, gen_cost, sty_cost, expected", [
    (2, 1.0, 2.0, 1), (4, 1.0, 2.0, 1), (6, 1.0, 2.0, 2), (8, 1.0, 2.0, 3),
    (4, 1.0, 1.0, 2), (8, 3.0, 1.0, 6), (8, 1.0, 3.0, 2),
])
def test_split_follows_the_cost_ratio(n, gen_cost, sty_cost, expected):
    assert split_gpus(n, gen_cost, sty_cost) == expected


@pytest.mark.parametrize("gen_cost, sty_cost", [(1.0, 1000.0), (1000.0, 1.0)])
def test_split_keeps_at_least_one_worker_per_home_stage(gen_cost, sty_cost):
    for n in range(2, 10):
        assert 0 < split_gpus(n, gen_cost, sty_cost) < n


def test_producers_override_the_ratio():
    assert split_gpus(8, 1.0, 2.0, producers=5) == 5


@pytest.mark.parametrize("producers", [0, 4, -1, 1.5, True])
def test_producers_out_of_bounds_is_a_one_line_error(producers):
    with pytest.raises(ValueError, match="--producers") as err:
        split_gpus(4, 1.0, 2.0, producers=producers)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("n, gen_cost, sty_cost", [(1, 1.0, 2.0), (0, 1.0, 2.0), (4, 0.0, 2.0), (4, 1.0, -1.0),
                                                   (4, float("nan"), 1.0)])
def test_bad_split_inputs_raise(n, gen_cost, sty_cost):
    with pytest.raises(ValueError):
        split_gpus(n, gen_cost, sty_cost)


def test_backlog_marks():
    assert backlog_marks(4) == (4, 10)
    assert backlog_marks(1) == (1, 4)


# choose_stage

N = 4
LOW, HIGH = backlog_marks(N)


@pytest.mark.parametrize("home", [GEN, STY])
@pytest.mark.parametrize("current", [None, GEN, STY])
def test_back_pressure_no_gen_at_or_above_high(home, current):
    for backlog in (HIGH, HIGH + 3):
        assert choose_stage(PAIR, home, current, backlog, True, True, N) == STY
        assert choose_stage(PAIR, home, current, backlog, True, False, N) is None  # wait, never gen


@pytest.mark.parametrize("home", [GEN, STY])
@pytest.mark.parametrize("current", [None, GEN, STY])
def test_elastic_takeover_when_a_stage_runs_dry(home, current):
    for backlog in range(0, HIGH):
        if backlog:
            assert choose_stage(PAIR, home, current, backlog, False, True, N) == STY  # gen ran out
    assert choose_stage(PAIR, home, current, 0, True, False, N) == GEN  # sty starves: everyone generates
    assert choose_stage(PAIR, home, current, 0, False, False, N) is None


@pytest.mark.parametrize("home", [GEN, STY])
def test_home_stage_inside_the_band(home):
    for backlog in range(1, HIGH):
        assert choose_stage(PAIR, home, home, backlog, True, True, N) == home
        assert choose_stage(PAIR, home, None, backlog, True, True, N) == home


def test_producer_lent_to_sty_stays_until_backlog_reaches_low():
    for backlog in range(LOW + 1, HIGH):
        assert choose_stage(PAIR, GEN, STY, backlog, True, True, N) == STY
    assert choose_stage(PAIR, GEN, STY, LOW, True, True, N) == GEN


def test_consumer_lent_to_gen_stays_until_backlog_reaches_low():
    for backlog in range(1, LOW):
        assert choose_stage(PAIR, STY, GEN, backlog, True, True, N) == GEN
    assert choose_stage(PAIR, STY, GEN, LOW, True, True, N) == STY


# BurstPolicy

def drive_burst(burst, tasks):
    """One worker running `tasks` through BurstPolicy; returns the stage sequence and the max backlog."""
    policy, gen_left, backlog, seq = BurstPolicy(PAIR, burst), tasks, 0, []
    while (stage := policy.next_stage(backlog, gen_left > 0, backlog > 0)) is not None:
        seq.append(stage)
        if stage == GEN:
            gen_left, backlog = gen_left - 1, backlog + 1
        else:
            backlog -= 1
        assert backlog >= 0 and len(seq) <= 2 * tasks
    return seq, max(seq[:i].count(GEN) - seq[:i].count(STY) for i in range(len(seq) + 1))


def test_burst_alternates_generating_and_styling():
    seq, _ = drive_burst(3, 8)
    assert "".join("g" if s == GEN else "s" for s in seq) == "gggsssgggsssggss"


@pytest.mark.parametrize("burst", [1, 4, 8])
def test_burst_keeps_the_backlog_bounded_and_finishes(burst):
    seq, max_backlog = drive_burst(burst, 50)
    assert seq.count(GEN) == seq.count(STY) == 50
    assert max_backlog == burst


def test_burst_rejects_a_non_positive_burst():
    with pytest.raises(ValueError, match="burst"):
        BurstPolicy(PAIR, 0)


# simulation

def test_simulation_finishes_near_ideal_and_beats_the_fixed_split():
    sim = load_sim()
    work = sim.Work.make(styles=10, prompts=20, ratio=0.5, seed=1)
    for n in (1, 2, 4, 8):
        r = sim.simulate(work, n, "burst" if n == 1 else "elastic")
        assert r.makespan <= 1.05 * r.ideal, r
        assert r.max_backlog <= (r.bound if n == 1 else r.bound + n), r
    fixed = sim.simulate(work, 4, "fixed", producers=1)
    assert fixed.makespan > 1.2 * sim.simulate(work, 4).makespan


def test_hysteresis_reduces_stage_switches():
    sim = load_sim()
    work = sim.Work.make(styles=10, prompts=20, ratio=0.5, seed=1)
    assert sim.simulate(work, 4).switches < sim.simulate(work, 4, hysteresis=False).switches


def test_training_first_keeps_every_gpu_busy_and_beats_training_everything_before_generating():
    sim = load_sim()
    assert sim.pipeline_stages() == (["train"], "gen", "sty")  # the simulation's stages are the graph's
    work = sim.Work.make(styles=10, prompts=8, ratio=0.5, seed=1, train_ratio=40.0)
    for n in (1, 2, 4):
        assert sim.simulate(work, n, "burst" if n == 1 else "elastic").over_ideal < 1.05
    ours, barrier = sim.simulate(work, 4), sim.simulate(work, 4, barrier=True)
    assert ours.makespan < barrier.makespan  # 10 LoRAs on 4 GPUs: the last round's idle GPUs generate
