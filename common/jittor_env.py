"""Import Jittor with the project's environment fixes applied first.

Jittor reads its environment once, at first import, so every process imports it through `load_jittor()`:
- a CUDA compiler on a machine without a GPU makes Jittor try (and fail) to build CUDA kernels, so nvcc is
  hidden there (`nvcc_path=""`);
- Jittor's fast CPU convolution and matmul need oneDNN 2.x, which Jittor would download from a server we
  cannot reach. The pip packages `onednn-cpu-gomp`/`onednn-devel-cpu-gomp` 2022.2.1 (oneDNN 2.6) put it in
  the environment's `lib/` and `include/`; we point Jittor's mkl cache folder at them.
- the first import compiles Jittor's core for minutes: say so, once.

The device is chosen once per process too (`use_device`): Jittor's `flags.use_cuda` is process-global, so
nothing else sets it; the engine only checks it (`require_device`).
"""
import atexit
import ctypes
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

# The folder name Jittor's installer looks for; if it holds lib/libmkldnn.so, Jittor downloads nothing.
_JITTOR_DNNL_DIR = {"x86_64": "dnnl_lnx_2.2.0_cpu_gomp", "aarch64": "dnnl_lnx_2.2.0_cpu_gomp_aarch64"}
SLOW_CPU_WARNING = (
    "jstyleid: oneDNN 2.x not found, so Jittor's CPU conv/matmul run ~100x slower; "
    "fix: pip install onednn-cpu-gomp==2022.2.1 onednn-devel-cpu-gomp==2022.2.1")

_jt = None
_device = None
DEVICES = ("cpu", "cuda")


class DeviceUnavailable(RuntimeError):
    """This process cannot run Jittor on the device asked for (no CUDA, or already on the other device)."""


def gpu_present() -> bool:
    """True when an NVIDIA GPU is visible to this process."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def onednn_prefix():
    """The installation prefix holding oneDNN 2.x (lib/libdnnl.so.2 and include/dnnl.h), or None."""
    candidates = [Path(sys.prefix), Path(sys.base_prefix), Path("/usr"),
                  Path("/usr/lib") / f"{platform.machine()}-linux-gnu"]
    for prefix in candidates:
        for lib in (prefix / "lib" / "libdnnl.so.2", prefix / f"lib/{platform.machine()}-linux-gnu/libdnnl.so.2"):
            include = prefix / "include" / "dnnl.h"
            if lib.is_file() and include.is_file():
                return lib, include.parent
    return None


def _link_onednn_for_jittor() -> bool:
    """Make Jittor's mkl cache folder point at the installed oneDNN; preload it so its ops can link."""
    found = onednn_prefix()
    if found is None or platform.machine() not in _JITTOR_DNNL_DIR:
        return False
    lib, include = found
    mkl_root = Path.home() / ".cache" / "jittor" / "mkl"
    home = mkl_root / _JITTOR_DNNL_DIR[platform.machine()]
    (home / "lib").mkdir(parents=True, exist_ok=True)
    for link, target in ((home / "lib" / "libmkldnn.so", lib), (home / "include", include)):
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.symlink_to(target)
    # Jittor takes the first dnnl* folder it lists: leave no other candidate beside ours.
    for other in mkl_root.iterdir():
        if other.name.startswith("dnnl") and other != home and other.is_dir():
            other.rename(mkl_root / f"old-{other.name}")
    # Jittor's compiled mkl ops need libdnnl.so.2 by soname; the loader would not search our prefix.
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    return True


def _first_compile_pending() -> bool:
    cache = Path.home() / ".cache" / "jittor"
    return not any(cache.glob("jt*/**/jittor_core*.so"))


class _default_signals:
    """Jittor's import may fork a pool of compile processes: they must get the default SIGTERM/SIGINT, not a
    caller's (a worker's stop request), or terminating them at exit hangs the process. Jittor's import also
    installs quick-exit handlers for SIGINT and SIGCHLD (any child killed by a signal, e.g. a hung worker the
    launcher SIGKILLs, would end this process): the caller's handlers come back afterwards."""

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.signal(s, signal.SIG_DFL)
                          for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}

    def __exit__(self, *exc):
        for s, handler in self.saved.items():
            signal.signal(s, handler)


def _close_compile_pool():
    """End the compile pool Jittor's import left running (idle processes); Jittor makes a new one if needed."""
    import jittor_utils
    if getattr(jittor_utils, "p", None) is not None and getattr(jittor_utils, "pool_size", 0):
        atexit.unregister(jittor_utils.pool_cleanup)
        jittor_utils.pool_cleanup()
        jittor_utils.pool_size = 0


def load_jittor(use_cuda=None):
    """Return the `jittor` module, configured for this machine. Call before anything imports jittor."""
    global _jt
    if _jt is not None:
        return _jt
    if "jittor" in sys.modules:
        raise RuntimeError("jittor was imported before common.jittor_env.load_jittor(); import it through "
                           "load_jittor() so the environment fixes apply")
    if use_cuda is None:
        use_cuda = gpu_present()
    if not use_cuda:
        os.environ["nvcc_path"] = ""
    os.environ.setdefault("use_mkl", "1")
    os.environ.setdefault("log_silent", "1")
    have_onednn = os.environ["use_mkl"] == "1" and _link_onednn_for_jittor()
    if not have_onednn:
        os.environ["use_mkl"] = "0"
    if _first_compile_pending():
        print("jstyleid: compiling Jittor's core for this machine; this takes 2-4 minutes once "
              "(cached in ~/.cache/jittor)", file=sys.stderr, flush=True)
    with _default_signals():
        import jittor as jt
    _close_compile_pool()
    if not have_onednn or jt.compile_extern.mkl_ops is None:
        warnings.warn(SLOW_CPU_WARNING, stacklevel=2)
    jt.flags.use_cuda = 1 if (use_cuda and jt.has_cuda) else 0
    _jt = jt
    return jt


def fast_cpu_path() -> bool:
    """True when Jittor's CPU conv/matmul go through oneDNN."""
    jt = load_jittor()
    return jt.compile_extern.mkl_ops is not None


def use_device(device: str) -> None:
    """Run this process's Jittor on `device` ("cpu" or "cuda"). Idempotent; asking for the other device
    later, or for CUDA where Jittor has none, raises DeviceUnavailable."""
    global _device
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is unknown; use one of {DEVICES}")
    if _device == device:
        return
    if _device is not None:
        raise DeviceUnavailable(f"this process already runs Jittor on {_device}; one process uses one device "
                                f"(start another process for {device})")
    jt = load_jittor(use_cuda=False if device == "cpu" else None)
    if device == "cuda" and not jt.has_cuda:
        raise DeviceUnavailable(_no_cuda_message())
    jt.flags.use_cuda = 1 if device == "cuda" else 0
    _device = device


def require_device(device: str) -> None:
    """Raise DeviceUnavailable unless this process's Jittor runs on `device`; changes nothing."""
    jt = load_jittor()
    current = "cuda" if jt.flags.use_cuda else "cpu"
    if device == current:
        return
    if device == "cuda" and not jt.has_cuda:
        raise DeviceUnavailable(_no_cuda_message())
    raise DeviceUnavailable(f"this process runs Jittor on {current}, not {device}; select the device once "
                            f"with common.jittor_env.use_device({device!r}) before loading models")


def _no_cuda_message() -> str:
    return (f"a GPU was asked for but Jittor has no CUDA here (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}); check the driver and nvcc, or run with --gpus cpu")
