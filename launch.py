"""jstyleid launcher: plan the dataset into the queue, run one worker per GPU, supervise, summarise.

    python launch.py --gpus 0,1,2,3 [--config configs/NAME.yaml] [--producers K] [--fresh] [--retry-failed]
    python launch.py --gpus cpu            # one CPU worker doing both stages (also when no GPU is found)
    python launch.py --ray auto [--workers N] --config ...  # one worker per GPU of a Ray cluster (README)
    python launch.py status [--config ...]  # counts, failures, throughput, ETA
    python launch.py --demo [--workdir DIR] # tiny CPU demo (default DIR: demo_run); prints its contact sheets

Every start re-plans from the dataset and the outputs (finished tasks are skipped, so a rerun resumes).
--fresh deletes the queue folder's contents (jobs, leases, logs, hand-off latents, manifest) and never
the outputs; it is needed when pixel settings changed since the queue was planned.
Exit codes: 0 done, 1 some jobs dead-lettered (listed), 2 usage/config/dataset/manifest error,
3 no usable device, 75 queue folder locked by another launcher, 130/143 interrupted.
The launcher never imports Jittor, nor Ray without --ray.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from common.config import ConfigError, load_config, require_path
from common.dataset import DatasetError, read_dataset
from common.graph import build_graph
from common.jittor_env import gpu_present
from common.jobqueue.lease import table as lease_table
from common.jobqueue.manifest import ManifestError, check_manifest, write_manifest
from common.jobqueue.planner import plan
from common.jobqueue.queue import Queue
from common.jobqueue.recovery import clear_queue, recover
from common.jobqueue.status import collect, format_failures, format_status
from common.jobqueue.supervisor import LocalWorker, Supervisor
from common.naming import NamingError
from common.scheduling import split_gpus

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75


class UsageError(ValueError):
    pass


def say(msg: str):
    from tqdm import tqdm
    tqdm.write(f"jstyleid: {msg}", file=sys.stderr)  # above the progress bars, not through them


def parse_args(argv):
    p = argparse.ArgumentParser(prog="launch.py", description=__doc__.split("\n")[0])
    p.add_argument("command", nargs="?", choices=("run", "status"), default="run")
    p.add_argument("--config", help="a YAML file (see configs/default.yaml); defaults otherwise")
    p.add_argument("--gpus", help="comma-separated GPU indices, or 'cpu' (default: every visible GPU)")
    p.add_argument("--producers", type=int, help="number of GPUs whose home stage is generation")
    p.add_argument("--fresh", action="store_true", help="clear the queue folder (never the outputs) and re-plan")
    p.add_argument("--retry-failed", action="store_true", help="give dead-lettered jobs another max_attempts")
    p.add_argument("--demo", action="store_true", help="run the tiny CPU demo and print its contact sheets")
    p.add_argument("--workdir", default="demo_run", help="with --demo: the folder for its model, data and outputs")
    p.add_argument("--ray", metavar="ADDRESS", help="run the workers on a Ray cluster: 'auto' (the one `ray start` "
                   "made here) or ray://HOST:PORT; every node must mount the queue, data and outputs at the same paths")
    p.add_argument("--workers", type=int, help="with --ray: at most N GPU workers, or N CPU workers on a cluster "
                   "without GPUs (default: one per GPU, or one per node)")
    return p.parse_args(argv)


def visible_gpus() -> list:
    """The GPUs this launcher may use: CUDA_VISIBLE_DEVICES' entries when it is set, else every GPU."""
    if not gpu_present():
        return []
    restricted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if restricted:
        return [g.strip() for g in restricted.split(",") if g.strip()]
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU"))]


def parse_gpus(spec) -> list:
    """['cpu'] or GPU indices; no GPU found means the CPU."""
    if spec is not None and spec.strip().lower() == "cpu":
        return ["cpu"]
    found = visible_gpus()
    if spec is None:
        return found or ["cpu"]
    gpus = [g.strip() for g in spec.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise UsageError(f"--gpus {spec!r}: expected distinct indices like 0,1,2,3 or 'cpu'")
    if not found:
        say(f"no GPU found (--gpus {spec}); running on the CPU")
        return ["cpu"]
    return gpus


def assign_roles(gpus: list, graph, producers) -> list:
    """[(gpu, home role)]: one slot does every stage; more split the balanced pair by their costs."""
    if len(gpus) == 1:
        return [(gpus[0], "both")]
    up, down = graph.flow()
    try:
        n_up = split_gpus(len(gpus), graph.spec(up).cost, graph.spec(down).cost,
                          producers if producers is not None else graph.config.scheduling.producers)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return [(g, up if i < n_up else down) for i, g in enumerate(gpus)]


def open_cluster(args):
    """--ray: the launcher becomes the Ray driver (docs/queue.md §9); Ray is imported only here."""
    if args.gpus is not None:
        raise UsageError("--gpus with --ray: a cluster's workers take its GPUs; --workers N caps how many")
    try:
        from common.jobqueue.ray_slots import RayCluster
    except ImportError as e:
        raise UsageError(f"--ray needs Ray ({e}); install it with pip install -e '.[ray]'") from None
    return RayCluster(args.ray, log=say)


def acquire_lock(queue: Queue, cluster=None) -> FileLock:
    """The flock, and with --ray the cluster-wide lock too, before launcher.json names this launcher."""
    queue.layout.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(queue.layout.lock))
    try:
        lock.acquire(timeout=0)
        held_by = cluster.lock(queue.layout.root) if cluster else None
        if held_by:
            lock.release()
            print(f"error: {held_by}", file=sys.stderr)
            raise SystemExit(EXIT_LOCKED)
    except Timeout:
        try:
            h = json.loads(queue.layout.holder.read_text())
            who = f"pid {h['pid']} on host {h['host']} since {time.strftime('%H:%M:%S', time.localtime(h['start']))}"
        except (OSError, ValueError, KeyError):
            who = "another launcher"
        print(f"error: {queue.layout.root} is in use by {who}; wait for it or stop it "
              f"(python launch.py status shows progress)", file=sys.stderr)
        raise SystemExit(EXIT_LOCKED)
    queue.layout.holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                               "start": time.time(), "argv": sys.argv}))
    return lock


class Progress:
    """One tqdm bar per stage (rate and ETA), fed from the done/ counts about once a second."""

    def __init__(self, queue: Queue, graph, totals: dict):
        from tqdm import tqdm
        self.q = queue
        self.base = {s: queue.count_done(s) for s in graph.stages}
        self.bars = {s: tqdm(total=totals[s], desc=s, unit=graph.spec(s).progress_unit, position=i, leave=True,
                             disable=None, dynamic_ncols=True) for i, s in enumerate(graph.stages)}
        self.last = 0.0

    def __call__(self, force=False):
        if not force and time.monotonic() - self.last < 1.0:
            return
        self.last = time.monotonic()
        for s, bar in self.bars.items():
            bar.update(self.q.count_done(s) - self.base[s] - bar.n)

    def done(self, stage: str) -> int:
        return self.q.count_done(stage) - self.base[stage]

    def close(self):
        self(force=True)
        for bar in self.bars.values():
            bar.close()


def summary(queue: Queue, sup: Supervisor, progress: Progress, wall: float) -> list:
    final, *earlier = reversed(queue.stages)
    images = progress.done(final)
    lines = [f"done in {wall:.1f} s: {images} image(s), {images / wall * 3600 if wall else 0:.1f} images/hour; "
             + ", ".join(f"{progress.done(s)} {s} job(s)" for s in reversed(earlier))]
    for s in sup.slots:
        where = f"slot {s.gpu} ({s.role}) on {s.node}" if s.node else f"gpu {s.gpu} ({s.role})"
        lines.append(f"  {where}: busy {s.busy_s / wall if wall else 0:.0%}, {s.jobs_done} job(s)"
                     + (f", parked: {s.parked}" if s.parked else ""))
    fails = queue.failures()
    if fails:
        lines.append(f"{len(fails)} job(s) failed (dead-lettered in {queue.layout.root}/*/failed/):")
        lines += format_failures(fails)
    return lines


def run(args) -> int:
    config_path = args.config
    if args.demo:  # the development kit's demo: a tiny model and dataset written first
        from common.devkit.demo import prepare_demo
        config_path = prepare_demo(Path(args.workdir))
        if not args.ray:
            args.gpus = "cpu"
    config = load_config(config_path)
    require_path(config.dataset, "dataset", config.source)
    graph = build_graph(config)
    styles = read_dataset(graph.dataset)
    graph.check(styles)
    if args.workers is not None and not args.ray:
        raise UsageError("--workers is for --ray; on one machine --gpus names the workers")
    cluster = open_cluster(args) if args.ray else None
    slots = assign_roles(cluster.slot_labels(args.workers) if cluster else parse_gpus(args.gpus), graph,
                         args.producers)
    queue = Queue(config.queue_dir, graph.rules(), fsync=config.queue.fsync == "all")
    lock = acquire_lock(queue, cluster)
    try:
        if cluster:
            cluster.attach(queue, work_left=queue.in_flight, kill_grace=config.queue.kill_grace_s)
            if cluster.stop_leftovers(grace=config.queue.kill_grace_s):  # this host's: recovery, below
                say("stopped worker(s) a previous launcher left on other nodes")
        if args.fresh:
            for note in clear_queue(queue, grace=config.queue.kill_grace_s):
                say(note)
            say(f"--fresh: cleared {queue.layout.root} (outputs kept)")
        check_manifest(queue, graph.plan)
        queue.layout.make()
        nodes = graph.nodes(styles)
        write_manifest(queue, graph.plan, sum(len(s.prompts) for s in styles))  # before any job is queued
        for note in recover(queue, graph.output_dirs(), grace=config.queue.kill_grace_s):
            say(note)
        report = plan(queue, nodes, retry_failed=args.retry_failed)
        for note in report.notes:
            say(note)
        if args.fresh and report.finished:
            say(f"{report.finished} finished output(s) in {config.output} are kept and skipped; to redo them "
                f"with the new settings, use a new output folder (or delete them)")
        queued = ", ".join(f"{report.queued[s]} to {graph.spec(s).verb}" for s in graph.stages)
        say(f"{report.total} task(s): {report.finished} finished, {queued}, {report.in_queue} already queued, "
            f"{report.failed_results} failed; workers: {', '.join(f'{g}:{r}' for g, r in slots)}")
        progress = Progress(queue, graph, open_jobs(queue, graph, nodes, report))
        sup = Supervisor(config, config_path, slots, queue, log=say, on_tick=progress,
                         start_worker=cluster.start_worker if cluster else LocalWorker)
        t0 = time.monotonic()
        code = sup.run() if queue.in_flight() else EXIT_OK
        progress.close()
        for line in summary(queue, sup, progress, time.monotonic() - t0):
            say(line)
        if code == EXIT_OK and queue.failures():
            code = EXIT_FAILED
        if args.demo and code == EXIT_OK:
            from common.devkit.demo import make_contact_sheets
            for path in make_contact_sheets(config):
                print(path)
        return code
    finally:
        try:
            queue.layout.holder.unlink()
        except FileNotFoundError:
            pass
        lock.release()
        if cluster:
            cluster.close()


def open_jobs(queue: Queue, graph, nodes, report) -> dict:
    """{stage: jobs this run will finish}: what is queued now, plus what completions will publish."""
    live = {s: sum(len(v) for k, v in queue.scan(s).items() if k in ("pending", "blocked", "retry", "claimed"))
            for s in graph.stages}
    final = graph.stages[-1]
    live[final] = max(live[final], report.total - report.finished - report.failed_results)
    return live


def status(args) -> int:
    config = load_config(args.config)
    graph = build_graph(config)
    queue = Queue(config.queue_dir, graph.rules())
    if not queue.layout.manifest.exists():
        print(f"{queue.layout.root}: no queue planned yet (run python launch.py first)")
        return EXIT_OK
    print(format_status(collect(queue)))
    workers = lease_table(queue.layout.workers)
    if workers:
        print(f"workers ({len(workers)}):", *workers, sep="\n")
    return EXIT_OK


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "status":
            return status(args)
        return run(args)
    except (ConfigError, DatasetError, NamingError, ManifestError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
