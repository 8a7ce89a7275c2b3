"""Jittor is imported with the project's fixes: no CUDA build without a GPU, oneDNN for fast CPU ops."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


def test_cpu_import_hides_nvcc_and_uses_onednn():
    out = run_python("from common.jittor_env import load_jittor, fast_cpu_path\n"
                     "import os\n"
                     "jt = load_jittor(use_cuda=False)\n"
                     "print(repr(os.environ['nvcc_path']), jt.flags.use_cuda, fast_cpu_path())")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["''", "0", "True"]


def test_without_onednn_it_warns_how_to_fix():
    out = run_python("from common.jittor_env import load_jittor\nload_jittor(use_cuda=False)", use_mkl="0")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "onednn-cpu-gomp" in out.stderr and "slower" in out.stderr


def test_importing_jittor_first_is_refused():
    out = run_python("import sys; sys.modules['jittor'] = object()\n"
                     "from common.jittor_env import load_jittor\nload_jittor()")
    assert out.returncode != 0 and "load_jittor()" in out.stderr
