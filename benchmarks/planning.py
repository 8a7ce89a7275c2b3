"""Planning cost with provenance (docs/queue.md §11): plan N existing results with and without the checks.

Writes a dataset of STYLES styles with N prompts in all, and every result and content image as a run would
(tiny PNGs carrying their records), then plans the whole set twice per round, alternating: with the
provenance checks (each output's record read and compared) and without (whole files count, as before).
Every result is finished, so planning queues nothing; what is timed is reading the outputs.

    python benchmarks/planning.py --results 100000 --json benchmarks/results/planning_cpu.json
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import load_config  # noqa: E402
from common.dataset import read_dataset  # noqa: E402
from common.graph import build_graph  # noqa: E402
from common.jobqueue.planner import plan  # noqa: E402
from common.jobqueue.queue import Queue  # noqa: E402
from common.provenance import write_png  # noqa: E402

STYLES = 20


def setup(root: Path, n: int):
    from PIL import Image
    for s in range(STYLES):
        folder = root / "data" / f"{s:02d}"
        (folder / "images").mkdir(parents=True)
        Image.new("RGB", (4, 4), (s, 0, 0)).save(folder / "images" / "ref.png")
        (folder / "prompt.json").write_text(json.dumps({str(i): f"prompt {i}" for i in range(s, n, STYLES)}))
    cfg = {"dataset": str(root / "data"), "output": str(root / "out"), "queue_dir": str(root / "q"),
           "stages": {"graph": "common.devkit.fake_stage:graph"}, "lora": {"missing": "warn"},
           "queue": {"fsync": "none"}}
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    graph, nodes, queue = planner_inputs(root)
    pixels = np.zeros((4, 4, 3), np.uint8)
    with graph.planning():
        for node in nodes:
            task = graph.task(node.job)
            path = task.files["content_png"] if node.job.stage == "gen" else task.files["output_png"]
            write_png(path, pixels, task.made_by, fsync=False)


def planner_inputs(root: Path):
    config = load_config(root / "run.yaml")
    graph = build_graph(config)
    nodes = graph.nodes(read_dataset(graph.dataset))
    queue = Queue(config.queue_dir, graph.rules(), fsync=False)
    queue.layout.make()
    return graph, nodes, queue


def time_plan(root: Path, checks: bool) -> float:
    graph, nodes, queue = planner_inputs(root)
    graph.check_provenance = checks
    t0 = time.perf_counter()
    with graph.planning():
        report = plan(queue, nodes)
    elapsed = time.perf_counter() - t0
    assert report.finished == report.total and not any(report.queued.values()), report
    return elapsed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=int, default=100000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jstyleid-plan-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        setup(root, args.results)
        made = time.perf_counter() - t0
        times = {"with_checks": [], "without_checks": []}
        for _ in range(args.rounds):
            times["without_checks"].append(time_plan(root, False))
            times["with_checks"].append(time_plan(root, True))
    best = {k: min(v) for k, v in times.items()}
    result = {"results": args.results, "styles": STYLES, "setup_s": round(made, 1), "runs_s": times,
              "best_s": best, "ratio": round(best["with_checks"] / best["without_checks"], 3)}
    print(f"{args.results} results: plan {best['without_checks']:.2f} s without the checks, "
          f"{best['with_checks']:.2f} s with them ({result['ratio']}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
