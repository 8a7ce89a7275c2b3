"""A Ray cluster of several nodes on this machine, to try `launch.py --ray` without a second computer.

Every node is a separate raylet with its own resources, so placement, node loss and actor restarts behave
as on a real cluster, while every node sees this machine's files (the shared filesystem, trivially).

    python -m common.devkit.local_cluster --nodes 3 -- python launch.py --ray {address} --config C
    python -m common.devkit.local_cluster --nodes 3 --gpus-per-node 1   # prints the address, waits for Ctrl-C

`{address}` in the command becomes the cluster's address; the cluster is shut down when the command ends.
`--gpus-per-node` declares stand-in GPUs (Ray only counts them: the stand-in stages need none).
"""
import argparse
import os
import signal
import subprocess
import sys

from ray.cluster_utils import Cluster


def start(nodes: int, cpus: int = 1, gpus: int = 0) -> Cluster:
    """A head node and `nodes - 1` more, each with `cpus` CPUs and `gpus` GPUs (the head: 0 GPUs, so a
    GPU worker always lives on a node that can be removed)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local trial reports nothing anywhere
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "num_gpus": 0 if nodes > 1 else gpus,
                                                            "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus, num_gpus=gpus)
    cluster.wait_for_nodes()
    return cluster


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(prog="python -m common.devkit.local_cluster", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--cpus-per-node", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    cluster = start(args.nodes, args.cpus_per_node, args.gpus_per_node)
    try:
        print(f"local Ray cluster of {args.nodes} node(s) at {cluster.address}", file=sys.stderr, flush=True)
        if command:
            return subprocess.call([part.replace("{address}", cluster.address) for part in command])
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)
        return 0
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
