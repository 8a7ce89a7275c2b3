"""Workers on a Ray cluster (docs/queue.md §10): the same worker loop, on the same queue, placed by Ray.

The launcher is the Ray driver. It plans as on one machine; then each of the Supervisor's slots is a small
actor (`SlotActor`: one GPU each, or one CPU) that execs the very same `python -m common.workers.worker`
as a child on its node, so the worker loop, its signals, PR_SET_PDEATHSIG and its log are unchanged, and
that reports the child's exit status (waitpid on that node proves the death). The Supervisor drives each
actor through a `RaySlot`, a handle with Popen's methods, with its restart, hang and Ctrl-C rules as they
are. Ray places the actors, gives each its own GPU (CUDA_VISIBLE_DEVICES) and reports their deaths; the
queue stays ours: Ray keeps no job state, and the queue on a shared filesystem is what lets a rerun
finish only what is missing.

How a worker's death is known:
- its actor's waitpid: the exit status, as on one machine (a hung worker is killed by its actor);
- Ray: the actor died (the pending `wait` call fails). A task on the worker's node then stops it, if it
  still runs, and confirms it is gone (pid, start time and boot id); if the node is gone too, the
  worker's lease decides: it says the worker exited, or it has not changed for its TTL;
- a worker that outlives all that (a node cut off from Ray but not from the files) is fenced: it stops
  at its next beat past the TTL, and what it writes late can replace nothing (lease.py, queue.py).

Only `launch.py --ray` imports this module: without it Ray is never loaded.
"""
import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from common.config import ConfigError
from common.jobqueue import lease
from common.jobqueue.layout import Layout
from common.workers.supervisor import EXIT_LOST, EXIT_NO_DEVICE, REPO

NAMESPACE = "jstyleid"
LOCK_WAIT_S = 30.0  # how long a dead launcher's lock actor may take to go (Ray notices the driver's death)
FORWARDED_ENV = "JSTYLEID_"  # the launcher's variables of this prefix reach the workers (stage knobs, tests)


class ClusterError(ConfigError):
    """The cluster is unreachable or too small for the request: one line for the user (exit 2)."""


def _flag(cmd: list, name: str, value: str) -> list:
    """`cmd` with `name`'s value replaced (or appended)."""
    cmd = list(cmd)
    if name in cmd:
        cmd[cmd.index(name) + 1] = value
    else:
        cmd += [name, value]
    return cmd


def node_label() -> str:
    """How logs and status name the node this runs on: host and Ray node id (several nodes may share a host)."""
    return f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()[:8]}"


@ray.remote(max_restarts=0, max_task_retries=0)
class SlotActor:
    """One slot on one node: runs the worker command as its child and reports how it ended.

    An asyncio actor: every call runs on the actor's one event-loop thread, the thread that forks the
    child, so the child's PR_SET_PDEATHSIG (armed against that thread) fires only when the actor dies."""

    def __init__(self):
        self.proc = None

    async def start(self, cmd: list, env: dict, cwd: str, marker: str, expected: bytes) -> dict:
        """Start the worker, or say in one line why this node cannot (it does not see the queue folder)."""
        where = node_label()
        try:
            seen = Path(marker).read_bytes()
        except OSError:
            seen = None
        if seen != expected:
            what = "is missing" if seen is None else "names another launcher"
            return {"error": f"node {where} cannot see the queue folder: {marker} {what} there; mount the "
                             f"shared folder at the same path on every node"}
        if not os.path.isdir(cwd):
            return {"error": f"node {where} has no folder {cwd} (the launcher's, where relative paths start); "
                             f"mount it at the same path on every node"}
        gpus = ray.get_gpu_ids()
        gpu = str(gpus[0]) if gpus else "cpu"
        cmd = _flag(_flag(cmd, "--gpu", gpu), "--parent", str(os.getpid())) + ["--fenced"]
        cmd[0] = sys.executable  # this node's Python (the one Ray runs here)
        env = dict(os.environ, **env)
        env[lease.NODE_ENV] = where
        if gpu == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL)
        pid = self.proc.pid
        return {"wid": lease.make_wid(gpu, pid), "node": where, "node_id": ray.get_runtime_context().get_node_id(),
                "proof": (pid, lease.proc_start(pid), lease.boot_id())}

    async def wait(self) -> int:
        """The child's exit status, once it has exited (waitpid here: proof that it is gone)."""
        while self.proc.poll() is None:
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def signal(self, sig: int):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)


@ray.remote(num_cpus=0, max_restarts=0)
class QueueLock:
    """The launcher lock across hosts: a named actor, unique in the cluster, owned by the driver (so it
    dies with it); `who()` names the holder."""

    def __init__(self, holder: dict):
        self.holder = holder

    def who(self) -> dict:
        return self.holder


@ray.remote(num_cpus=0, max_retries=0)
def _stop_worker(pid: int, start, boot: str, grace: float) -> bool:
    """On a worker's node, after its actor died: stop the worker if it still runs (SIGTERM: it releases its
    jobs; SIGKILL after `grace`). True once it is gone (same boot and start time: not a reused pid)."""
    def running():
        return lease.boot_id() == boot and lease.proc_start(pid) == start
    deadline = time.monotonic() + grace
    for sig, until in ((signal.SIGTERM, deadline), (signal.SIGKILL, deadline + 10.0)):
        if running():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        while running() and time.monotonic() < until:
            time.sleep(0.05)
    return not running()  # still there: stuck in the kernel (an NFS hang); its lease decides


@ray.remote(num_cpus=0, max_retries=0)
def _stop_leftovers(root: str, grace: float) -> int:
    """On one node: stop the workers a dead launcher left there (matched by host, boot id, start time)."""
    from common.jobqueue.recovery import stop_leftover_workers
    return len(stop_leftover_workers(SimpleNamespace(layout=Layout(root, {})), grace))


class RaySlot:
    """The Supervisor's handle on one slot's actor (subprocess.Popen's methods). `wid` names a
    placeholder until the actor has started its worker; `placed` says when it has."""

    def __init__(self, cluster: "RayCluster", slot, cmd: list, env: dict):
        self.cluster, self.slot = cluster, slot
        self.actor = cluster.actor_for(slot)
        self.wid, self.node, self.placed = f"ray-slot{slot.gpu}-unplaced", None, False
        self.returncode = None
        self._start = self.actor.start.remote(cmd, env, os.getcwd(), str(cluster.marker), cluster.marker_bytes)
        self._wait = None
        self._lost = None  # why Ray says the actor is gone
        self._stopping = None  # the call that stops its worker on its node, after the actor died

    # -- Popen's methods ------------------------------------------------------------------------------
    def poll(self):
        if self.returncode is None:
            if not self.placed:
                self._poll_start()
            if self.placed and self.returncode is None:
                self._poll_wait()
        return self.returncode

    def send_signal(self, sig: int):
        if self.returncode is not None:
            return
        if not self.placed or self._lost:  # nothing runs for this slot (or nothing we can reach)
            self._end(EXIT_LOST if self._lost else 0, kill_actor=not self._lost)
            return
        self.actor.signal.remote(int(sig))

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    # -- states ---------------------------------------------------------------------------------------
    def _poll_start(self):
        ready, _ = ray.wait([self._start], timeout=0)
        if not ready:
            if not self.cluster.work_left():  # never placed, and nothing is left for it to do
                self._end(0, kill_actor=True)
            return
        try:
            info = ray.get(self._start)
        except RayError as e:
            self.cluster.say(f"slot {self.slot.gpu}: its actor died before starting a worker ({_first_line(e)})")
            self._end(EXIT_LOST)
            return
        if "error" in info:
            self.cluster.say(f"error: {info['error']}")
            self._end(EXIT_NO_DEVICE, kill_actor=True)
            return
        self.wid, self.node, self.placed = info["wid"], info["node"], True
        self.node_id, self.proof = info["node_id"], info["proof"]
        self._wait = self.actor.wait.remote()
        self.cluster.say(f"slot {self.slot.gpu} ({self.slot.home}): worker {self.wid} on {self.node}")

    def _poll_wait(self):
        if self._lost is None:
            ready, _ = ray.wait([self._wait], timeout=0)
            if not ready:
                info = self.slot.watch.info if self.slot.watch else {}  # as the Supervisor last read it
                if info.get("phase") == "exited" and info.get("orphaned"):
                    self._end(EXIT_LOST)  # it stopped because its actor died, before Ray told us
                return
            try:
                self._end(ray.get(self._wait))  # its actor's waitpid: proof
                return
            except RayError as e:
                self._lost = _first_line(e)
            self.cluster.say(f"worker {self.wid} on {self.node}: Ray reports its actor dead ({self._lost}); "
                             f"stopping the worker on its node, or, if the node is gone, waiting until its "
                             f"lease says it exited or expires")
            here = NodeAffinitySchedulingStrategy(self.node_id, soft=False)
            self._stopping = _stop_worker.options(scheduling_strategy=here).remote(
                *self.proof, self.cluster.kill_grace)
        if self._stopping is not None and ray.wait([self._stopping], timeout=0)[0]:
            try:
                gone = ray.get(self._stopping)
            except RayError:
                gone = False  # the node is gone too (or cannot be reached)
            self._stopping = None
            if gone:
                self._end(EXIT_LOST)
                return
        if (lease.read(self.cluster.layout.lease_path(self.wid)) or {}).get("phase") == "exited":
            self._end(EXIT_LOST)

    def _end(self, code: int, kill_actor: bool = False):
        self.returncode = code
        if code == EXIT_LOST or kill_actor:
            self.cluster.forget(self.slot, self.actor, kill=kill_actor)


def _check_reachable(address: str):
    """Fail in one line, at once, when HOST:PORT does not answer (Ray itself retries for minutes)."""
    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise ClusterError(f"--ray {address}: no Ray cluster answers there ({e}); start one with `ray start "
                           f"--head` (and `ray start --address HEAD:6379` on each node), or pass --ray auto on a "
                           f"node") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


class RayCluster:
    """The launcher's side of a Ray cluster: connection, slot count, lock, leftovers, one actor per slot."""

    def __init__(self, address: str, log=print):
        self.say = log
        _check_reachable(address)
        env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        try:
            ray.init(address=address, namespace=NAMESPACE, runtime_env={"env_vars": env}, log_to_driver=False,
                     logging_level="warning")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(f"--ray {address}: cannot connect to a Ray cluster ({_first_line(e)}); start one "
                               f"with `ray start --head` (and `ray start --address HEAD:6379` on each node)") from None
        self.forward = dict(env, **{k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)})
        self.actors, self.lock_actor, self.layout, self.marker, self.marker_bytes = {}, None, None, None, None
        self.gpus, self.work_left, self.kill_grace = False, lambda: True, 20.0

    def slot_labels(self, workers: int = None) -> list:
        """One slot per GPU of the cluster (at most `workers`), or `workers` CPU slots (default: one per
        node) on a cluster without GPUs."""
        res = ray.cluster_resources()
        n_gpus, n_cpus = int(res.get("GPU", 0)), int(res.get("CPU", 0))
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        if workers is not None and workers < 1:
            raise ClusterError(f"--workers {workers}: expected at least 1")
        self.gpus = n_gpus > 0
        if self.gpus:
            if workers is not None and workers > n_gpus:
                raise ClusterError(f"--workers {workers}: the cluster has {n_gpus} GPU(s)")
            n = workers or n_gpus
        else:
            n = workers or nodes
            if n > n_cpus:
                raise ClusterError(f"--workers {n}: the cluster has {n_cpus} CPU(s) and no GPU; one worker "
                                   f"takes a CPU")
        labels = [str(i) for i in range(n)]
        for label in labels:  # placed (their processes started) while the launcher plans
            self.actor_for(SimpleNamespace(gpu=label))
        return labels

    def lock(self, root: Path):
        """The queue folder's lock on the cluster, taken after the local flock: a named actor, derived from
        the folder's path, that Ray keeps unique and removes with its driver. Returns None, or who holds it."""
        holder = {"pid": os.getpid(), "host": lease.HOST, "proc_start": lease.proc_start(os.getpid())}
        name = "queue-" + hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:  # a named actor is registered before .remote() returns: the name is ours, or ValueError
                self.lock_actor = QueueLock.options(name=name, lifetime=None).remote(holder)
                return None
            except ValueError:  # the name is taken: by a live launcher, or by one Ray has not buried yet
                pass
            try:
                other = ray.get(ray.get_actor(name).who.remote(), timeout=5)
            except (RayError, GetTimeoutError, ValueError):
                other = None  # gone meanwhile
            if other is not None and not _dead_here(other):
                return (f"{root} is in use by pid {other.get('pid')} on host {other.get('host')} (a launcher on "
                        f"this Ray cluster); wait for it or stop it (python launch.py status shows progress)")
            if time.monotonic() > deadline:
                return f"{root}: a dead launcher's lock is still held on the Ray cluster after {LOCK_WAIT_S:.0f} s"
            time.sleep(0.5)

    def attach(self, queue, work_left, kill_grace: float):
        """Remember the queue: its marker (launcher.json, which names this launcher: a node that reads the
        same bytes sees the same folder), how to ask whether any job is left, and the kill grace."""
        self.layout, self.work_left, self.kill_grace = queue.layout, work_left, kill_grace
        self.marker = queue.layout.holder.resolve()
        self.marker_bytes = self.marker.read_bytes()

    def stop_leftovers(self, grace: float) -> int:
        """Stop workers a dead launcher left on the other hosts of the cluster (this host's are stopped by
        recovery itself). A host no longer in the cluster cannot be reached: its workers are fenced."""
        hosts = {}
        for n in ray.nodes():
            if n.get("Alive") and n.get("NodeManagerHostname") != lease.HOST:
                hosts.setdefault(n["NodeManagerHostname"], n["NodeID"])
        refs = [_stop_leftovers.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                .remote(str(self.layout.root), grace) for node in hosts.values()]
        return sum(ray.get(refs)) if refs else 0

    def start_worker(self, slot, cmd: list, env: dict) -> RaySlot:
        """The Supervisor's start_worker: the slot's command, run by its actor on its node (relative paths
        resolve against the launcher's folder, which every node must see at the same path too)."""
        if "--config" in cmd:
            cmd = _flag(cmd, "--config", os.path.abspath(cmd[cmd.index("--config") + 1]))
        return RaySlot(self, slot, cmd, self.forward)

    def actor_for(self, slot):
        if slot.gpu not in self.actors:
            need = {"num_gpus": 1, "num_cpus": 0} if self.gpus else {"num_cpus": 1, "scheduling_strategy": "SPREAD"}
            self.actors[slot.gpu] = SlotActor.options(**need).remote()
        return self.actors[slot.gpu]

    def forget(self, slot, actor, kill: bool):
        """Drop a slot's actor (dead, or not needed): its next start gets a new one, placed anew."""
        if self.actors.get(slot.gpu) is actor:
            del self.actors[slot.gpu]
        if kill:
            ray.kill(actor)

    def close(self):
        for actor in list(self.actors.values()) + ([self.lock_actor] if self.lock_actor else []):
            try:
                ray.kill(actor)
            except RayError:
                pass
        self.actors.clear()
        ray.shutdown()


def _dead_here(holder: dict) -> bool:
    """Whether a lock holder that names this host is gone (the lock actor outlives it by a moment)."""
    if holder.get("host") != lease.HOST:
        return False
    start = holder.get("proc_start")
    return lease.proc_start(int(holder.get("pid", 0))) != start
