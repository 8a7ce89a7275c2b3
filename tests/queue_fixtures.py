"""Helpers for the job-system tests: a tiny dataset, a fast fake-stage config, the launcher as a
subprocess, and check_invariants() (docs/queue.md §7)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from common.atomic import png_is_complete
from common.config import load_config
from common.dataset import read_dataset
from common.devkit.fake_stage import fake_latent, fake_output
from common.graph import build_graph
from common.jobqueue.job import read_job
from common.jobqueue.queue import Queue

REPO = Path(__file__).resolve().parents[1]
STYLES = {"00": ["Dolphin", "Lighthouse", "A cat / dog?"], "01": ["Tree", "Bicycle", "Mountain"]}

# Fast supervision for a 2-core machine: beats every 0.1 s, a silent working worker is hung after 1 s. A
# worker's start (Python and its imports, before its first beat) runs under the loading TTL, and takes
# seconds on a loaded machine: 1 s there killed healthy workers as hung.
FAST = {"queue": {"fsync": "none", "heartbeat_s": 0.1, "ttl_loading_s": 10.0, "ttl_working_s": 1.0,
                  "backoff_base_s": 0.0, "restart_base_s": 0.05, "kill_grace_s": 0.5, "stop_grace_s": 3.0},
        "stages": {"graph": "common.devkit.fake_stage:graph"},
        "lora": {"missing": "warn"}, "producer": {"batch": 2}, "consumer": {"batch": 2}}  # the fakes need no LoRA


def make_dataset(root: Path, styles: dict = None) -> Path:
    for style, prompts in (styles or STYLES).items():
        (root / style / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (10, 20, 30)).save(root / style / "images" / "ref.png")
        (root / style / "prompt.json").write_text(
            __import__("json").dumps({str(i): p for i, p in enumerate(prompts)}))
    return root


def write_config(tmp: Path, styles: dict = None, **sections) -> Path:
    data = {"dataset": str(make_dataset(tmp / "data", styles)), "output": str(tmp / "out"),
            "queue_dir": str(tmp / "q")}
    for key, value in FAST.items():
        data[key] = dict(value, **sections.pop(key, {}))
    data.update(sections)
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def graph_of(config_path):
    """(config, graph, nodes, queue) of a config: the stage graph over its dataset, and its queue."""
    config = load_config(config_path)
    graph = build_graph(config)
    styles = read_dataset(graph.dataset)
    graph.check(styles)
    return config, graph, graph.nodes(styles), Queue(config.queue_dir, graph.rules(), fsync=False)


def tasks_of(config_path):
    """(config, tasks of the final stage: one per (style, prompt), with every path)."""
    config, graph, nodes, _ = graph_of(config_path)
    return config, [graph.task(n.job) for n in nodes if n.job.stage == graph.stages[-1]]


def launch(config_path, *args, env=None, timeout=60, wait=True):
    """Run launch.py as a subprocess (the fake stages sleep 1-3 ms per task unless env says otherwise)."""
    cmd = [sys.executable, str(REPO / "launch.py"), "--config", str(config_path), "--gpus", "cpu", *args]
    full_env = dict(os.environ, PYTHONPATH=str(REPO))
    full_env.update({"JSTYLEID_FAKE_MS": "1-3", **(env or {})})
    if not wait:
        return subprocess.Popen(cmd, env=full_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, env=full_env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def wait_for(condition, timeout=20.0, step=0.02):
    """Poll a condition with a deadline instead of sleeping a guessed time."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def check_invariants(config_path, expect_failed=()):
    """Each id in at most one state per stage and none claimed; each task has a valid output (with the
    expected bytes) and a done record, or a failed record; no temp file left; attempts <= max."""
    config, tasks = tasks_of(config_path)
    _, _, nodes, q = graph_of(config_path)
    scans = {s: q.scan(s) for s in q.stages}
    ids = {n.job.id for n in nodes}
    for stage, scan in scans.items():
        assert not scan["claimed"], f"{stage} jobs still claimed: {list(scan['claimed'])}"
        seen = {}
        for state, jobs in scan.items():
            for jid, path in jobs.items():
                assert jid not in seen, f"{stage} {jid} in both {seen[jid]} and {state}"
                assert jid in ids, f"{stage} {jid} belongs to no task"
                seen[jid] = state
                job = read_job(path)
                assert job.attempts <= job.max_attempts, f"{path}: attempts {job.attempts}"
    for t in tasks:
        failed = [s for s in q.stages if t.id in scans[s]["failed"]]
        if t.prompt in expect_failed:
            assert failed and not t.files["output_png"].exists(), f"{t.prompt} should have been dead-lettered"
            continue
        assert not failed, f"{t.prompt} dead-lettered: {read_job(scans[failed[0]]['failed'][t.id]).errors}"
        assert png_is_complete(t.files["output_png"]), f"missing or partial output {t.files['output_png']}"
        assert t.id in scans["sty"]["done"], f"no done record for {t.prompt}"
        got = np.asarray(Image.open(t.files["output_png"]))
        assert np.array_equal(got, fake_output(fake_latent(t.id), t.style)), f"wrong bytes in {t.files['output_png']}"
    leftovers = [p for p in Path(config.output).rglob("*.tmp")] + list((q.layout.tmp).glob("*"))
    assert not leftovers, f"temp files left: {leftovers}"
    return config, tasks


def worker_pids(queue_dir: Path) -> list:
    pids = []
    for lease in (queue_dir / "workers").glob("*.json"):
        try:
            pids.append(int(json.loads(lease.read_text())["pid"]))
        except (OSError, ValueError, KeyError):
            pass
    return pids


def kill_run(first, queue_dir: Path):
    """SIGKILL the launcher and its workers at once, as a power cut or `kill -9` would."""
    victims = worker_pids(queue_dir)
    first.kill()
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    first.wait()
