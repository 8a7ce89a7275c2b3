"""jstyleid launcher: plan the dataset into the queue, run one worker per GPU, supervise, summarise.

    python launch.py --gpus 0,1,2,3 [--config configs/NAME.yaml] [--producers K] [--fresh] [--retry-failed]
    python launch.py --gpus cpu            # one CPU worker doing both stages (also when no GPU is found)
    python launch.py status [--config ...]  # counts, failures, throughput, ETA
    python launch.py score [--config ...] [--results DIR] [--json PATH]  # the challenge's score of a folder
    python launch.py --demo [--workdir DIR] # tiny CPU demo (default DIR: demo_run); prints its contact sheets
    python launch.py --ray auto [--workers N] --config ...  # one worker per GPU of a Ray cluster (README)

Every start re-plans from the dataset and the outputs (finished tasks are skipped, so a rerun resumes).
A result counts as finished only when its provenance says this run would make it the same way (the
settings, the model, LoRA and style image it was made from); any other is made again and replaced, the
old file staying until its replacement is in place (docs/inputs.md §6). --trust-existing also counts
results that carry no provenance (made by another tool or an older jstyleid).
--fresh deletes the queue folder's contents (jobs, leases, logs, hand-off latents, manifest) and never
the outputs; it is needed when pixel settings changed since the queue was planned, and the results made
under the old settings are then made again and replaced (never counted as this run's).
Exit codes: 0 done, 1 some jobs dead-lettered or results missing (listed), 2 usage/config/dataset/
manifest/queue-folder error (also a full disk), 3 no usable device, 75 queue or output folder in use by
another launcher, 130/143 interrupted. What is refused at launch, and why: docs/inputs.md, docs/queue.md §9.
The launcher never imports Jittor, nor Ray without --ray.
"""
import argparse
import errno
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from common.atomic import write_bytes
from common.config import ConfigError, load_config, require_path
from common.dataset import DatasetError, read_dataset
from common.graph import build_graph
from common.jittor_env import gpu_present
from common.jobqueue import crash
from common.jobqueue.job import CorruptJob, read_job
from common.jobqueue.lease import table as lease_table
from common.jobqueue.manifest import ManifestError, check_manifest, write_manifest
from common.jobqueue.planner import plan
from common.jobqueue.queue import Queue
from common.jobqueue.recovery import clear_queue, foreign_entries, recover
from common.jobqueue.status import collect, format_failures, format_status
from common.workers.supervisor import LocalWorker, Supervisor
from common.naming import NamingError
from common.workers.scheduling import split_gpus

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 1, 2, 75, 130
OUTPUT_LOCK, OUTPUT_HOLDER = ".jstyleid.lock", ".jstyleid.json"  # in the output folder, held for a run


class UsageError(ValueError):
    pass


class Locked(RuntimeError):
    """Another launcher holds the queue or the output folder (exit 75); the message names it."""


class QueueFolderError(ValueError):
    """The queue folder holds what the queue did not make (a link, or files of a folder that is no queue)."""


def say(msg: str):
    from tqdm import tqdm
    tqdm.write(f"jstyleid: {msg}", file=sys.stderr)  # above the progress bars, not through them


def parse_args(argv):
    p = argparse.ArgumentParser(prog="launch.py", description=__doc__.split("\n")[0])
    p.add_argument("command", nargs="?", choices=("run", "status", "score"), default="run")
    p.add_argument("--config", help="a YAML file (see configs/default.yaml); defaults otherwise")
    p.add_argument("--gpus", help="comma-separated GPU indices, or 'cpu' (default: every visible GPU)")
    p.add_argument("--producers", type=int, help="number of GPUs whose home stage is generation")
    p.add_argument("--fresh", action="store_true", help="clear the queue folder and re-plan; outputs are kept, and "
                   "each made under other settings or inputs is made again and replaced once the new one is whole")
    p.add_argument("--retry-failed", action="store_true", help="give dead-lettered jobs another max_attempts")
    p.add_argument("--trust-existing", action="store_true", help="count results without provenance (made by "
                   "another tool or an older jstyleid) as finished instead of making them again")
    p.add_argument("--demo", action="store_true", help="run the tiny CPU demo and print its contact sheets")
    p.add_argument("--workdir", default="demo_run", help="with --demo: the folder for its model, data and outputs")
    p.add_argument("--ray", metavar="ADDRESS", help="run the workers on a Ray cluster: 'auto' (the one `ray start` "
                   "made here) or ray://HOST:PORT; every node must mount the queue, data and outputs at the same paths")
    p.add_argument("--results", help="with score: the results folder to score (default: the config's output)")
    p.add_argument("--json", help="with score: write the scores here as JSON")
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


def assign_homes(gpus: list, graph, producers) -> list:
    """[(gpu, home stage)]: one slot does every stage; more split the balanced pair by their costs."""
    if len(gpus) == 1:
        return [(gpus[0], "both")]
    up, down = graph.flow()
    try:
        n_up = split_gpus(len(gpus), graph.spec(up).cost, graph.spec(down).cost,
                          producers if producers is not None else graph.config.scheduling.producers)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return [(g, up if i < n_up else down) for i, g in enumerate(gpus)]


def check_queue_folder(queue: Queue, former=()):
    """Refuse a queue folder holding a symbolic link anywhere (the queue makes none, and recovery or
    --fresh would delete, or a write overwrite, what it points at), and a folder that holds no queue but
    other files (a home folder: --fresh would delete its tmp/ or logs/)."""
    root = queue.layout.root
    foreign = [] if queue.layout.manifest.exists() else foreign_entries(queue, former)
    if foreign:
        raise QueueFolderError(f"{root}: holds {foreign[0]!r} ({len(foreign)} entries the queue did not make) and "
                               "no queue; recovery and --fresh delete what the queue names there: point queue_dir "
                               "at a new or empty folder")
    links = queue.layout.links()
    if links:
        more = f" ({len(links)} links in all)" if len(links) > 1 else ""
        raise QueueFolderError(f"{links[0]} is a symbolic link{more}; the queue folder holds only what the queue "
                               "made, and recovery or --fresh would delete through it: remove the link(s)")


def _take(lock_path: Path, holder_path: Path, what: str, info: dict, also=None) -> FileLock:
    """Take `lock_path` (a flock, dropped by the kernel when its holder dies) or exit 75 naming the holder
    that `holder_path` records; then record ourselves there. Neither file is opened through a link.
    `also()`: a second lock taken after the flock (the cluster's), returning who holds it, or None."""
    for path in (lock_path, holder_path):
        if path.is_symlink():
            raise QueueFolderError(f"{path} is a symbolic link; a lock file is ours alone: remove the link")
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            h = json.loads(holder_path.read_bytes())
            who = f"pid {h['pid']} on host {h['host']} since {time.strftime('%H:%M:%S', time.localtime(h['start']))}"
            if h.get("queue_dir"):
                who += f" (queue folder {h['queue_dir']})"
        except (OSError, ValueError, KeyError, TypeError):
            who = "another launcher"
        raise Locked(f"{what} is in use by {who}; wait for it or stop it (python launch.py status shows "
                     "progress)") from None
    held_by = also() if also else None
    if held_by:
        lock.release()
        raise Locked(held_by)
    write_bytes(holder_path, json.dumps(info).encode(), fsync=False)  # a rename: replaces, never follows
    return lock


def _release(lock: FileLock, holder_path: Path):
    try:
        holder_path.unlink()
    except FileNotFoundError:
        pass
    lock.release()


def holder_info(queue: Queue) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": time.time(), "argv": sys.argv,
            "queue_dir": str(queue.layout.root.resolve())}


def open_cluster(args):
    """--ray: the launcher becomes the Ray driver (docs/queue.md §10); Ray is imported only here."""
    if args.gpus is not None:
        raise UsageError("--gpus with --ray: a cluster's workers take its GPUs; --workers N caps how many")
    try:
        from common.workers.ray_slots import RayCluster
    except ImportError as e:
        raise UsageError(f"--ray needs Ray ({e}); install it with pip install -e '.[ray]'") from None
    return RayCluster(args.ray, log=say)


def acquire_lock(queue: Queue, cluster=None) -> FileLock:
    """The one launcher of a queue folder (docs/queue.md §5): the flock, and with --ray the cluster-wide
    lock too, before launcher.json names this launcher."""
    queue.layout.root.mkdir(parents=True, exist_ok=True)
    also = (lambda: cluster.lock(queue.layout.root)) if cluster else None
    return _take(queue.layout.lock, queue.layout.holder, str(queue.layout.root), holder_info(queue), also)


def acquire_output_lock(output: Path, queue: Queue) -> FileLock:
    """The one launcher of an output folder: two launchers with different queue folders on one output
    would make every result twice and leave each other's hand-offs behind."""
    output.mkdir(parents=True, exist_ok=True)
    return _take(output / OUTPUT_LOCK, output / OUTPUT_HOLDER, f"output folder {output}", holder_info(queue))


class Progress:
    """One tqdm bar per stage (rate and ETA), fed from the done/ counts about once a second; a stage that
    declares `steps` (training) counts steps, so its ETA is honest: finished jobs count whole, jobs in
    flight by their progress."""

    def __init__(self, queue: Queue, graph, totals: dict):
        from tqdm import tqdm
        self.q, self.graph = queue, graph
        self.base = {s: queue.count_done(s) for s in graph.stages}
        self.bars = {s: tqdm(total=totals[s] * (graph.spec(s).steps or 1), desc=s, unit=graph.spec(s).progress_unit,
                             position=i, leave=True, disable=None, dynamic_ncols=True)
                     for i, s in enumerate(graph.stages)}
        self.last = 0.0

    def count(self, stage: str) -> int:
        spec = self.graph.spec(stage)
        done = self.done(stage)
        if not spec.steps:
            return done
        return done * spec.steps + sum(p["step"] for _, p in job_progress(self.q, self.graph, stage))

    def __call__(self, force=False):
        if not force and time.monotonic() - self.last < 1.0:
            return
        self.last = time.monotonic()
        for s, bar in self.bars.items():
            bar.update(min(self.count(s), bar.total) - bar.n)

    def done(self, stage: str) -> int:
        return self.q.count_done(stage) - self.base[stage]

    def close(self):
        self(force=True)
        for bar in self.bars.values():
            bar.close()


def job_progress(queue: Queue, graph, stage: str) -> list:
    """[(job, {"step", "steps", "loss"})] of the stage's unfinished jobs that report progress (training)."""
    spec, out, scanned = graph.spec(stage), [], queue.scan(stage)
    for state in ("claimed", "pending", "retry", "blocked"):
        for path in scanned[state].values():
            try:
                job = read_job(path)
                progress = spec.progress(graph.task(job))
            except (CorruptJob, FileNotFoundError):
                continue
            if progress:
                out.append((job, dict(progress, state=state)))
    return out


def summary(queue: Queue, graph, sup: Supervisor, progress: Progress, wall: float) -> list:
    images = progress.done(graph.results)
    lines = [f"done in {wall:.1f} s: {images} image(s), {images / wall * 3600 if wall else 0:.1f} images/hour; "
             + ", ".join(f"{progress.done(s)} {s} job(s)" for s in graph.stages if s != graph.results)]
    for s in sup.slots:
        where = f"slot {s.gpu} ({s.home}) on {s.node}" if s.node else f"gpu {s.gpu} ({s.home})"
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
    graph.trust_existing = args.trust_existing
    styles = read_dataset(graph.dataset)
    graph.check(styles)  # folders first (the queue's alone, no links in the output), then the stages'
    if args.workers is not None and not args.ray:
        raise UsageError("--workers is for --ray; on one machine --gpus names the workers")
    cluster = open_cluster(args) if args.ray else None
    try:
        slots = assign_homes(cluster.slot_labels(args.workers) if cluster else parse_gpus(args.gpus), graph,
                             args.producers)
        queue = Queue(config.queue_dir, graph.rules(), fsync=config.queue.fsync)
        check_queue_folder(queue, graph.former_folders)
        lock = acquire_lock(queue, cluster)
        try:
            out_lock = acquire_output_lock(graph.output, queue)
            try:
                if cluster:
                    cluster.attach(queue, work_left=queue.in_flight, kill_grace=config.queue.kill_grace_s)
                    if cluster.stop_leftovers(grace=config.queue.kill_grace_s):  # this host's: recovery
                        say("stopped worker(s) a previous launcher left on other nodes")
                return _run_locked(args, config, config_path, graph, styles, slots, queue, cluster)
            finally:
                _release(out_lock, graph.output / OUTPUT_HOLDER)
        finally:
            _release(lock, queue.layout.holder)
    finally:
        if cluster:
            cluster.close()


def _run_locked(args, config, config_path, graph, styles, slots, queue, cluster=None) -> int:
    """Clear (--fresh), plan, supervise and summarise, holding the queue and the output locks."""
    if args.fresh:
        for note in clear_queue(queue, grace=config.queue.kill_grace_s, former=graph.former_folders):
            say(note)
        say(f"--fresh: cleared {queue.layout.root}; outputs are kept until replaced: each result made under "
            "other settings or inputs is made again and replaces the old one once it is whole")
    check_manifest(queue, graph.plan)
    queue.layout.make()
    nodes = graph.nodes(styles)
    write_manifest(queue, graph.plan, sum(len(s.prompts) for s in styles))  # before any job is queued
    crash.point("after_manifest")
    for note in recover(queue, graph.output_dirs(), grace=config.queue.kill_grace_s):
        say(note)
    with graph.planning():
        report = plan(queue, nodes, retry_failed=args.retry_failed)
    graph.identities.save()
    for note in report.notes:
        say(note)
    if report.superseded:
        say(superseded_line(report, graph))
    for job in report.retried:
        say(f"{job.stage} {job.id} ({job.group}) failed before, but a file it reads changed since: trying it again")
    say(plan_line(report, graph, slots))
    if "score" not in graph.stages and config.eval.enabled is None:
        from common.graph import scoring
        missing_files = scoring(config)[1]
        say(f"scoring is off: {missing_files[0]}" + (f" (and {len(missing_files) - 1} more)" if len(missing_files) > 1
                                                     else "") + "; set the eval: paths to score this run")
    progress = Progress(queue, graph, open_jobs(queue, graph, nodes, report))
    sup = Supervisor(config, config_path, slots, queue, log=say, on_tick=progress,
                     start_worker=cluster.start_worker if cluster else LocalWorker)
    t0 = time.monotonic()
    code = sup.run() if queue.in_flight() else EXIT_OK
    progress.close()
    for line in summary(queue, graph, sup, progress, time.monotonic() - t0):
        say(line)
    missing = [n.job for n in nodes if n.job.stage == graph.results and not queue.rules[n.job.stage].done(n.job)]
    failures = queue.failures()
    if failures:
        say(f"fix the cause, then rerun: a failed job whose style image or LoRA changed since is retried by "
            f"itself; to retry them all: {retry_command(args)}")
    elif missing and code == EXIT_OK:  # e.g. jobs quarantined by a worker: never report success without them
        say(f"{len(missing)} result(s) missing (e.g. {missing[0].group}/{missing[0].payload.get('name')}.png); "
            f"see {queue.layout.root}/*/failed/corrupt/ and the worker logs, then rerun")
    if code == EXIT_OK and (failures or missing):
        code = EXIT_FAILED
    if "score" in graph.stages:
        from common.score.report import publish
        for line in publish(config, styles):
            say(line)
    if args.demo and code == EXIT_OK:
        from common.devkit.demo import loss_curves, make_contact_sheets
        for path in make_contact_sheets(config) + loss_curves(config):
            print(path)
    return code


def plan_line(report, graph, slots) -> str:
    """`6 result(s): 4 finished, 0 failed; 2 style score(s): 1 finished, 0 failed; jobs: 1 to generate, ...`:
    the results the user asked for, then, when a per-style stage reads them (the score), its styles, each
    counted in its own unit; then the jobs queued and the workers."""
    counted = [(graph.results, "result(s)")]
    if graph.results != graph.stages[-1]:
        counted.append((graph.stages[-1], f"style {graph.stages[-1]}(s)"))
    counts = "; ".join(f"{report.stages[s].total} {unit}: {report.stages[s].finished} finished, "
                       f"{report.stages[s].failed} failed" for s, unit in counted)
    queued = ", ".join(f"{report.queued[s]} to {graph.spec(s).verb}" for s in graph.stages)
    return (f"{counts}; jobs: {queued} queued now, {report.in_queue} already queued; "
            f"workers: {', '.join(f'{g}:{r}' for g, r in slots)}")


def superseded_line(report, graph) -> str:
    """`12 result(s) superseded, made again and replaced: 8 sty (settings), ...`, and the rule for files
    without provenance."""
    parts = [f"{n} {stage} ({why})" for (stage, why), n in sorted(report.superseded.items())]
    final = sum(n for (stage, _), n in report.superseded.items() if stage == graph.stages[-1])
    line = (f"{final} result(s) superseded: made from other settings or inputs than this run's, so made again "
            f"(each old file stays until its replacement is whole): {', '.join(parts)}")
    if any(why == "no provenance" for _, why in report.superseded):
        line += ("; a file without provenance (another tool's, or an older jstyleid's) is never counted as "
                 "finished unless you pass --trust-existing")
    return line


def retry_command(args) -> str:
    """The command line of this run with --retry-failed (what to type to give every dead letter another go)."""
    argv = [a for a in sys.argv[1:] if a != "--fresh"] if Path(sys.argv[0]).name == "launch.py" else []
    if not argv:
        argv = (["--config", str(args.config)] if args.config else []) + (["--gpus", args.gpus] if args.gpus else [])
    return shlex.join(["python", "launch.py", *argv, *([] if "--retry-failed" in argv else ["--retry-failed"])])


def open_jobs(queue: Queue, graph, nodes, report) -> dict:
    """{stage: jobs this run will finish}: what is queued now, plus what completions will publish."""
    live = {s: sum(len(v) for k, v in queue.scan(s).items() if k in ("pending", "blocked", "retry", "claimed"))
            for s in graph.stages}
    final = graph.results
    if final == graph.stages[-1]:  # the planner's final nodes are the results
        live[final] = max(live[final], report.total - report.finished - report.failed_results)
    else:  # a per-style stage reads them: count the results not yet made
        rules = queue.rules[final]
        live[final] = max(live[final], sum(1 for n in nodes if n.job.stage == final and not rules.done(n.job)))
    return live


def status(args) -> int:
    config = load_config(args.config)
    graph = build_graph(config)
    queue = Queue(config.queue_dir, graph.rules())
    if not queue.layout.manifest.exists():
        print(f"{queue.layout.root}: no queue planned yet (run python launch.py first)")
        return EXIT_OK
    extra = {s: [f"  {job.group}: step {p['step']}/{p['steps']}"
                 + (f", loss {p['loss']:.4g}" if isinstance(p.get("loss"), (int, float)) else "") + f" ({p['state']})"
                 for job, p in job_progress(queue, graph, s)]
             for s in graph.stages if graph.spec(s).steps}
    print(format_status(collect(queue, graph.results), extra))
    workers = lease_table(queue.layout.workers)
    if workers:
        print(f"workers ({len(workers)}):", *workers, sep="\n")
    return EXIT_OK


def score(args) -> int:
    """`launch.py score`: consumer.score in a process of its own (the launcher never imports Jittor), on the
    first GPU of --gpus, else the CPU."""
    gpus = parse_gpus(args.gpus) if args.gpus else ["cpu"]
    env = dict(os.environ)
    if gpus[0] != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[0])
    cmd = [sys.executable, "-m", "consumer.score", "--device", "cpu" if gpus[0] == "cpu" else "cuda"]
    for flag, value in (("--config", args.config), ("--results", args.results), ("--json", args.json)):
        if value:
            cmd += [flag, str(value)]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), env.get("PYTHONPATH")]))
    return subprocess.call(cmd, env=env)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "status":
            return status(args)
        if args.command == "score":
            return score(args)
        return run(args)
    except (ConfigError, DatasetError, NamingError, ManifestError, UsageError, QueueFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Locked as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except KeyboardInterrupt:  # outside the supervisor, which handles Ctrl-C itself: planning is idempotent
        print("error: interrupted; rerun the same command to resume (nothing done is lost)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:  # a full disk, a permission: one line naming the file
        fix = {errno.ENOSPC: "free space", errno.EDQUOT: "free space (disk quota)",
               errno.EACCES: "fix the permissions", errno.EROFS: "use a writable folder"}.get(e.errno, "fix it")
        print(f"error: {e.filename or 'a file'}: {e.strerror or e}; {fix} and rerun the same command (what is "
              "done is kept)", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
