"""Jittor is imported with the project's fixes: no CUDA build without a GPU, oneDNN for fast CPU ops."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import kernel_header

ROOT = Path(__file__).resolve().parents[1]


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


def test_cpu_import_hides_nvcc_and_uses_onednn():
    out = run_python("from common.jittor_env import load_jittor, fast_cpu_path\n"
                     "import os\n"
                     "from pathlib import Path\n"
                     "jt = load_jittor(use_cuda=False)\n"
                     "print(repr(os.environ['nvcc_path']), jt.flags.use_cuda, fast_cpu_path(), "
                     "Path(jt.flags.cache_path).name)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-4:] == ["''", "0", "True", "jstyleid"]  # the kernels' folder: not the branch


def test_the_set_up_command_compiles_jittor_and_says_what_it_runs_on():
    out = subprocess.run([sys.executable, "-m", "common.jittor_env"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    header = "no" if kernel_header.gpu_machine() else "yes"  # see tests/test_kernel_header.py
    assert f"ready on cpu; oneDNN: yes; precompiled kernel header: {header}; cache: " in out.stdout


def test_without_onednn_it_warns_how_to_fix():
    out = run_python("from common.jittor_env import load_jittor\nload_jittor(use_cuda=False)", use_mkl="0")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "onednn-cpu-gomp" in out.stderr and "slower" in out.stderr


def test_importing_jittor_first_is_refused():
    out = run_python("import sys; sys.modules['jittor'] = object()\n"
                     "from common.jittor_env import load_jittor\nload_jittor()")
    assert out.returncode != 0 and "load_jittor()" in out.stderr


# ---------------------------------------------------------------- the GPU path check (stubbed Jittor)
def stub_jittor(cudnn=True, cublas=True, use_cuda_sticks=True):
    """A Jittor stand-in with CUDA: what `use_device("cuda")` reads and sets."""
    from types import SimpleNamespace

    class Flags:
        use_tensorcore = 1  # e.g. set from the environment: use_device must turn it off
        _use_cuda = 0

        @property
        def use_cuda(self):
            return self._use_cuda

        @use_cuda.setter
        def use_cuda(self, value):
            self._use_cuda = value if use_cuda_sticks else 0

    sizes = []
    library = SimpleNamespace(set_algorithm_cache_size=sizes.append)
    extern = SimpleNamespace(cudnn=library if cudnn else None, cudnn_ops=object() if cudnn else None,
                             cublas_ops=object() if cublas else None)
    return SimpleNamespace(has_cuda=True, flags=Flags(), compile_extern=extern, cache_sizes=sizes)


@pytest.mark.parametrize("missing,words", [({"cudnn": False}, "cuDNN is not loaded"),
                                           ({"cublas": False}, "cuBLAS is not loaded"),
                                           ({"use_cuda_sticks": False}, "use_cuda did not stay on")])
def test_a_gpu_without_a_whole_path_fails_in_one_line(monkeypatch, missing, words):
    from common import jittor_env
    stub = stub_jittor(**missing)
    monkeypatch.setattr(jittor_env, "_jt", stub)
    monkeypatch.setattr(jittor_env, "_device", None)
    with pytest.raises(jittor_env.DeviceUnavailable) as info:
        jittor_env.use_device("cuda")
    message = str(info.value)
    assert words in message and "\n" not in message and "--gpus cpu" in message
    assert stub.flags.use_cuda == 0 and jittor_env._device is None  # nothing half-selected


def test_a_whole_gpu_path_is_tuned_once(monkeypatch):
    from common import jittor_env
    stub = stub_jittor()
    monkeypatch.setattr(jittor_env, "_jt", stub)
    monkeypatch.setattr(jittor_env, "_device", None)
    jittor_env.use_device("cuda")
    jittor_env.use_device("cuda")
    assert stub.flags.use_cuda == 1 and stub.flags.use_tensorcore == 0  # fp16 products accumulate in fp32
    assert stub.cache_sizes == [jittor_env.CONV_ALGO_CACHE] and jittor_env.CONV_ALGO_CACHE > 100


# ---------------------------------------------------------------- where Jittor's caches are, and the import
def test_jittor_home_is_found_as_jittor_finds_it(monkeypatch, tmp_path):
    from common.jittor_env import jittor_cache, jittor_home
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("JITTOR_HOME", raising=False)
    assert jittor_home() == tmp_path and jittor_cache() == tmp_path / ".cache" / "jittor"
    recorded = tmp_path / "recorded"  # Jittor records a JITTOR_HOME it was given as the new default
    (tmp_path / ".cache" / "jittor").mkdir(parents=True)
    (tmp_path / ".cache" / "jittor" / "config.json").write_text(json.dumps({"JITTOR_HOME": str(recorded)}))
    assert jittor_home() == recorded
    monkeypatch.setenv("JITTOR_HOME", str(tmp_path / "env"))
    assert jittor_cache() == tmp_path / "env" / ".cache" / "jittor"
    (tmp_path / ".cache" / "jittor" / "config.json").write_text("{half-writ")
    monkeypatch.delenv("JITTOR_HOME")
    assert jittor_home() == tmp_path  # an unreadable record is no record


def test_import_waits_for_the_import_lock_and_keeps_torch_out(tmp_path):
    """Two processes never link oneDNN or import Jittor at once; Jittor's import must not pull torch in."""
    from filelock import FileLock

    from common.jittor_env import jittor_cache
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    code = ("import sys\nfrom common.jittor_env import load_jittor\nload_jittor(use_cuda=False)\n"
            "print('jittor', 'torch' in sys.modules, flush=True)\nimport torch\nprint('torch importable')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    with FileLock(str(jittor_cache() / "jstyleid-import.lock")):
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(4)
        assert proc.poll() is None  # waiting for the lock
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert out.split("\n")[:2] == ["jittor False", "torch importable"]  # blocked during the import only
