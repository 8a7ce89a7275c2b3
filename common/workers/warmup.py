"""Warm the kernel cache in one process before several workers start.

Jittor compiles each new kernel on first use and caches it on disk. On a fresh machine N workers starting
together would each hit a cold cache with their first batch: they queue on Jittor's compile lock inside
their first jobs (minutes of CUDA compiles, under the lease's loading TTL), and a broken compile fails
the same jobs N times over, counting attempts until they are dead-lettered. So when a launch starts more
than one worker, the supervisor first runs this: one process builds the balanced stages (generation and
StyleID) on the first slot's device and runs one batch of each, at the stages' batch sizes and image
sizes, with WARM_STEPS steps, into a temporary folder. No job is claimed; on a warm cache it costs one
model load and a few steps. If it fails, no worker starts and the launcher reports its last line.

    python -m common.workers.warmup --config CFG --gpu 0 --log queue_dir/logs/warmup.log

Its log is its heartbeat: it writes a line on every beat (at most every queue.heartbeat_s), and the
supervisor ends it when the log has been silent longer than queue.ttl_loading_s.
"""
import argparse
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

WARM_STEPS = 2  # the kernels do not depend on the step count
EXIT_NO_DEVICE = 3


def warm_config(config):
    """The run's config with few steps, and the base model where a style's LoRA is not trained yet."""
    lora = config.lora
    if lora.missing == "train":
        lora = dataclasses.replace(lora, missing="warn")
    return dataclasses.replace(config, lora=lora,
                               producer=dataclasses.replace(config.producer, steps=WARM_STEPS),
                               consumer=dataclasses.replace(config.consumer, steps=WARM_STEPS))


def warm_tasks(graph, styles, stage: str, folder: Path) -> list:
    """A batch of `stage` for the first prompt of the first style, every output inside `folder`."""
    from common.graph import PROMPT
    spec = graph.spec(stage)
    style = next(s for s in styles if s.prompts)
    prompt = style.prompts[0]
    tasks = []
    for i in range(spec.batch if spec.unit == PROMPT else 1):
        payload = {"prompt": prompt.text, "name": f"warm{i}", "seed": graph.config.producer.seed + i}
        task = graph.task(graph.job(spec, style.name, payload))
        files = {role: folder / f"warm{i}-{role}{path.suffix}" for role, path in task.files.items()}
        tasks.append(dataclasses.replace(task, files=files, scratch_dir=folder / "scratch"))
    return tasks


def warm_up(config, gpu: str, say=print) -> float:
    """Run one batch of the upstream and downstream stages on `gpu`; return the seconds it took."""
    from common.dataset import read_dataset
    from common.graph import build_graph
    t0 = time.monotonic()
    graph = build_graph(config)
    styles = read_dataset(graph.dataset)
    device = "cpu" if gpu == "cpu" else "cuda"
    warm = warm_config(config)
    folder = Path(tempfile.mkdtemp(prefix="jstyleid-warmup-"))
    every = config.queue.heartbeat_s
    last = [0.0]

    def beat(phase: str):
        if time.monotonic() - last[0] >= every:
            say(f"beat {phase}")
            last[0] = time.monotonic()

    try:
        for stage in graph.flow():
            say(f"warming {stage} ({graph.spec(stage).impl}) on {device}")
            built = graph.stage_class(stage)(warm, device)
            built.run(warm_tasks(graph, styles, stage, folder), beat)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return time.monotonic() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.workers.warmup", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None)
    p.add_argument("--gpu", default="cpu")
    p.add_argument("--log", default=None, help="append output here (the supervisor watches it)")
    args = p.parse_args(argv)
    if args.log:
        fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)

    def say(msg):
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    say(f"warm-up on gpu {args.gpu} pid {os.getpid()}")  # first, before the imports: the heartbeat starts
    from common.workers.worker import _set_pdeathsig
    _set_pdeathsig()  # it ends with the launcher, as workers do
    from common.config import load_config
    from common.stage import DeviceError
    try:
        seconds = warm_up(load_config(args.config), args.gpu, say)
    except DeviceError as e:
        say(f"error: {e}")
        return EXIT_NO_DEVICE
    except Exception:
        say(f"warm-up failed:\n{traceback.format_exc()}")
        return 1
    say(f"warm-up done in {seconds:.1f} s")
    return 0


class WarmUp:
    """The supervisor's side: start the warm-up process, watch its log, end it if asked or silent."""

    def __init__(self, config, config_path, gpu: str, log_path: Path, repo: Path):
        self.ttl, self.log_path = config.queue.ttl_loading_s, Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "common.workers.warmup", "--gpu", gpu, "--log", str(self.log_path)]
        if config_path:
            cmd += ["--config", str(config_path)]
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="" if gpu == "cpu" else gpu,
                   PYTHONPATH=os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH")) if p))
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL)

    def poll(self):
        """Its exit code once it ended, else None; a warm-up silent for longer than the loading TTL is
        killed (and then reported as killed)."""
        rc = self.proc.poll()
        if rc is not None:
            return rc
        try:
            last = max(self.log_path.stat().st_mtime, self.started)
        except OSError:
            last = self.started
        if time.time() - last > self.ttl:
            self.stop(signal.SIGKILL)
        return None

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def last_line(self) -> str:
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no log"
        return lines[-1] if lines else "no output"


if __name__ == "__main__":
    sys.exit(main())
