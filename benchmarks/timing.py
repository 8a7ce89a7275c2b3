"""Wall-clock timing of device work: every timed run ends by waiting for the device.

GPU frameworks return before their kernels finish, and Jittor computes nothing until a result is asked
for, so a timer read right after the call measures how fast work is queued. `median_time` therefore takes
the wait as a required argument and calls it on each run's result, inside the timed region: for Jittor
`common.jittor_env.wait_device` (it evaluates the result and waits for CUDA: `jt.sync(vars, True)`; plain
`sync()` only hands the kernels to CUDA), for PyTorch one that calls `torch.cuda.synchronize()`.
"""
import statistics
import time


def median_time(fn, wait, warmup=1, runs=3, cpu_times=None):
    """Median wall seconds of `runs` calls of `wait(fn())`, after `warmup` untimed ones. The median CPU
    seconds of this process (all its threads) go to `cpu_times` when given."""
    if runs < 1:
        raise ValueError("median_time needs at least one timed run")
    for _ in range(warmup):
        wait(fn())
    walls, cpus = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        wait(fn())
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    if cpu_times is not None:
        cpu_times.append(statistics.median(cpus))
    return statistics.median(walls)


def timed(fn, wait):
    """(seconds, result) of one call of `fn()`, ended by `wait(result)`."""
    start = time.perf_counter()
    result = fn()
    wait(result)
    return time.perf_counter() - start, result
