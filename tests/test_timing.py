"""benchmarks/timing.py: every timed run waits for the device, so lazy or asynchronous work is counted."""
import time

import numpy as np
import pytest

from benchmarks.timing import median_time, timed
from common.jittor_env import load_jittor, wait_device

jt = load_jittor()


def test_the_wait_runs_inside_every_timed_run():
    """A stand-in for an asynchronous device: the call returns at once, the work happens in the wait."""
    waited = []

    def wait(result):
        time.sleep(0.05)
        waited.append(result)

    seconds = median_time(lambda: "queued", wait, warmup=2, runs=3)
    assert waited == ["queued"] * 5  # the warm-ups and every timed run, each on its own result
    assert seconds >= 0.05


def test_timing_needs_a_run():
    with pytest.raises(ValueError):
        median_time(lambda: None, lambda _: None, runs=0)


def test_wait_device_computes_the_results_it_is_given(monkeypatch):
    """Jittor is lazy: the result must be computed inside the wait (device_sync=True), nested ones too."""
    calls = []
    real_sync = jt.sync
    monkeypatch.setattr(jt, "sync", lambda vars, device_sync: calls.append((len(vars), device_sync))
                        or real_sync(vars, device_sync))
    a = jt.array(np.ones(4, np.float32)) * 3
    b = jt.array(np.ones(2, np.float32)) + 1
    seconds, out = timed(lambda: (a, [b]), wait_device)
    assert calls == [(2, True)] and seconds >= 0
    assert out[0].numpy().tolist() == [3.0] * 4
