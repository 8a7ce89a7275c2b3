"""benchmarks/gpu_check.py end to end in its CPU smoke mode, so the first GPU run's one command cannot rot."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_smoke_runs_every_step_and_writes_what_a_device_run_brings_back(tmp_path):
    out = tmp_path / "gpu_check"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=860)
    log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
    assert done.returncode == 0, done.stdout[-2000:] + log[-4000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())  # a device run returns 8 files, 0 folders
    summary = json.loads((out / "summary.json").read_text())
    assert {name: step["status"] for name, step in summary["steps"].items()} == dict.fromkeys(
        ["probe", "parity_fp32", "parity_fp16", "engine_unet", "engine_attention", "stages", "engine_vae_text"], "ok")
    assert all(step["peak_memory_mib"] > 0 for step in summary["steps"].values())  # the sampler ran throughout
    probe = json.loads((out / "1_probe.json").read_text())["probe"]
    assert probe["problems"] == [] and "mkl_conv" in probe["kernels"]["conv"]
    parity = json.loads((out / "2_parity.json").read_text())
    errors = [v for k, v in parity["parity_fp32"].items() if k.startswith(("unet", "vae", "text")) and
              isinstance(v, float)]
    assert len(errors) == 4 and max(errors) <= 1e-4
    assert parity["parity_fp16"]["conv_fp16_rel_err"] >= parity["parity_fp16"]["conv_fp16_floor"] > 0
    engine = json.loads((out / "3_engine.json").read_text())
    assert engine["engine_unet"]["unet_fp32_b1_jittor_s"] > 0
    assert engine["engine_attention"]["attn_256x32_h2_fp32_b1_jittor_s"] > 0
    stages = json.loads((out / "4_stages.json").read_text())["stages"]
    assert stages["consumer_speedup_vs_per_image"] > 0 and stages["producer_s_per_image_step_b4"] > 0
    vae_text = json.loads((out / "5_vae_text.json").read_text())["engine_vae_text"]
    assert vae_text["vae_decode_fp32_b1_jittor_s"] > 0 and vae_text["text_encode_fp32_b1_jittor_s"] > 0


def test_a_step_past_its_timeout_ends_with_its_children(tmp_path):
    """A benchmark's workers must not keep the GPU busy into the next step."""
    import os
    import time

    from benchmarks.gpu_check import run_step
    marker = tmp_path / "child.pid"
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(marker)!r}, 'w').write(str(child.pid))\ntime.sleep(120)")
    with open(tmp_path / "log.txt", "w") as log:
        status, seconds = run_step("slow", 3, [sys.executable, "-c", code], {}, log)
    assert status == "timeout after 3 s" and seconds < 60
    child = int(marker.read_text())
    for _ in range(100):  # killed; reaped by init once its parent is gone
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            break
        if state in ("Z", "X"):
            break
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        raise AssertionError("the step's child outlived its timeout")
