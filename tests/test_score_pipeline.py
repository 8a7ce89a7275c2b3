"""The score through the real launcher, on the demo (random-weight networks: the numbers mean nothing, the
plumbing is real): a kill while a style is scored, the rerun that finishes it, `launch.py score` agreeing
with the stage, a changed result rescoring its style alone, and a missing result named (exit 1)."""
import json
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from common.config import load_config
from common.devkit.demo import PROMPTS, prepare_demo
from queue_fixtures import kill_run

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"dino_score", "hist_score", "fid_score", "lpip_score", "clip_iqa_score", "clip_r_score", "final_score"}


def demo(workdir: Path):
    return [sys.executable, "launch.py", "--demo", "--workdir", str(workdir)]


def score(config_path: Path, *args):
    return subprocess.run([sys.executable, "launch.py", "score", "--config", str(config_path), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_the_score_stage_survives_a_kill_and_rescores_only_a_changed_style(tmp_path):
    queue_dir, out = tmp_path / "queue_dir", tmp_path / "output"
    log = tmp_path / "run.log"
    with open(log, "wb") as sink:
        first = subprocess.Popen(demo(tmp_path), cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while not list(queue_dir.glob("score/claimed/*/*.json")):
        assert first.poll() is None, f"the demo ended before scoring:\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "no score job was claimed within 600 s"
        time.sleep(0.1)
    kill_run(first, queue_dir)
    assert not (out / "scores.json").exists()

    rerun = subprocess.run(demo(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    scores = json.loads((out / "scores.json").read_text())
    assert KEYS <= set(scores) and set(scores["per_style"]) == set(PROMPTS) and KEYS <= set(scores["content"])
    assert "overall" in rerun.stderr and (out / "report.html").is_file() and (out / "scores.png").is_file()

    config_path = prepare_demo(tmp_path)
    command = score(config_path, "--json", str(tmp_path / "mine.json"))
    assert command.returncode == 0, command.stderr[-2000:]
    mine = json.loads((tmp_path / "mine.json").read_text())
    assert mine["complete"] is True and abs(mine["final_score"] - scores["final_score"]) < 1e-6
    assert "overall" in command.stdout

    kept = (out / "00" / "score.json").stat().st_mtime_ns
    result = sorted((out / "01").glob("*.png"))[0]
    Image.new("RGB", (128, 128), "white").save(result)  # another tool's image: no provenance, redone
    again = subprocess.run(demo(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "00" / "score.json").stat().st_mtime_ns == kept, "style 00 was scored again"
    assert "1 to score" in again.stderr, again.stderr[-2000:]

    result.unlink()
    incomplete = score(config_path)
    assert incomplete.returncode == 1 and f"missing: {result}" in incomplete.stderr


def test_score_refuses_in_one_line_without_its_files(tmp_path):
    config = prepare_demo(tmp_path)
    text = config.read_text().replace(str(tmp_path / "score" / "clip_r_prompts.txt"), str(tmp_path / "nope.txt"))
    (tmp_path / "other.yaml").write_text(text)
    assert load_config(tmp_path / "other.yaml").eval.clip_r_prompts.endswith("nope.txt")
    refused = score(tmp_path / "other.yaml")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.txt" in lines[0] and "clip_r_score" in lines[0]
