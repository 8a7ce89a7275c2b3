"""Import Jittor with the project's environment fixes applied first.

Jittor reads its environment once, at first import, so every process imports it through `load_jittor()`:
- a CUDA compiler on a machine without a GPU makes Jittor try (and fail) to build CUDA kernels, so nvcc is
  hidden there (`nvcc_path=""`);
- Jittor's fast CPU convolution and matmul need oneDNN 2.x, which Jittor would download from a server we
  cannot reach. The pip packages `onednn-cpu-gomp`/`onednn-devel-cpu-gomp` 2022.2.1 (oneDNN 2.6) put it in
  the environment's `lib/` and `include/`; we point Jittor's mkl cache folder at them.
- the first import compiles Jittor's core for minutes: say so, once.

The device is chosen once per process too (`use_device`): Jittor's `flags.use_cuda` is process-global, so
nothing else sets it; the engine only checks it (`require_device`). Choosing CUDA checks, once, that the
GPU path is whole (`gpu_path_problems`): Jittor runs with `log_silent=1` (its info lines would flood every
worker's log), which also drops its warnings and even its fatal errors, so a cuDNN or cuBLAS that failed
to load would otherwise mean silently slow generic kernels.

Several processes may start at once on a cold cache (one worker per GPU). Jittor serialises its per-op
compiles with a file lock, but not the first steps of its import (recording $JITTOR_HOME in a config file)
nor our oneDNN links: `load_jittor` runs those under a lock of its own. Jittor's caches live in
`jittor_cache()`, found as Jittor finds it ($JITTOR_HOME honoured); its kernels under one name, not the
git branch Jittor would read (`CACHE_NAME`).
"""
import atexit
import ctypes
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from common import kernel_header

# The folder name Jittor's installer looks for; if it holds lib/libmkldnn.so, Jittor downloads nothing.
_JITTOR_DNNL_DIR = {"x86_64": "dnnl_lnx_2.2.0_cpu_gomp", "aarch64": "dnnl_lnx_2.2.0_cpu_gomp_aarch64"}
SLOW_CPU_WARNING = (
    "jstyleid: oneDNN 2.x not found, so Jittor's CPU conv/matmul run ~100x slower; "
    "fix: pip install onednn-cpu-gomp==2022.2.1 onednn-devel-cpu-gomp==2022.2.1")

_jt = None
_device = None
DEVICES = ("cpu", "cuda")
# cuDNN convolution algorithms Jittor remembers per process (its default, 100, is less than one worker needs:
# ~33 UNet conv shapes per batch size, several batch sizes, the VAE; past it every call re-chooses).
CONV_ALGO_CACHE = 4096
CACHE_NAME = "jstyleid"


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


def jittor_home() -> Path:
    """The folder whose .cache/jittor holds Jittor's caches, decided as Jittor decides it: $JITTOR_HOME, else
    the JITTOR_HOME Jittor recorded in ~/.cache/jittor/config.json (it records any JITTOR_HOME it is given,
    and that one stays the default for later processes), else the user's home."""
    if os.environ.get("JITTOR_HOME"):
        return Path(os.environ["JITTOR_HOME"]).absolute()
    try:
        recorded = json.loads((Path.home() / ".cache" / "jittor" / "config.json").read_text()).get("JITTOR_HOME")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return Path(recorded) if isinstance(recorded, str) and recorded else Path.home()


def jittor_cache() -> Path:
    """Jittor's cache folder: compiled core and ops (jt*/), its oneDNN folder (mkl/)."""
    return jittor_home() / ".cache" / "jittor"


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
    mkl_root = jittor_cache() / "mkl"
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
    return not any(jittor_cache().glob("jt*/**/jittor_core*.so"))


@contextmanager
def _import_lock():
    """One process at a time links oneDNN and imports Jittor on this cache: Jittor's import locks its own
    compiles, but rewrites its config file and we re-point links before that lock is taken."""
    cache = jittor_cache()
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / "jstyleid-import.lock")):
        yield


@contextmanager
def _without_torch():
    """Jittor's import imports torch when it can (to patch how the two share a process). Our processes never
    mix them: PyTorch only runs as a reference in processes of its own, so Jittor's import must not see it."""
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which Jittor catches
    try:
        yield
    finally:
        if blocked and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


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
    # Jittor names its kernel cache after the git branch of the folder it is installed in (ours, with a
    # project .venv): one fixed name keeps a branch switch from recompiling every kernel (docs/engine.md §12)
    os.environ.setdefault("cache_name", CACHE_NAME)
    os.environ.setdefault("log_silent", "1")  # use_device("cuda") checks what its dropped warnings would say
    with _import_lock():
        have_onednn = os.environ["use_mkl"] == "1" and _link_onednn_for_jittor()
        if not have_onednn:
            os.environ["use_mkl"] = "0"
        if _first_compile_pending():
            print(f"jstyleid: compiling Jittor's core for this machine; this takes 2-4 minutes once "
                  f"(cached in {jittor_cache()})", file=sys.stderr, flush=True)
        with _default_signals(), _without_torch():
            import jittor as jt
        kernel_header.install(jt)  # before any kernel compiles (docs/engine.md §12)
    _close_compile_pool()
    on_cuda = bool(use_cuda and jt.has_cuda)
    if not on_cuda and (not have_onednn or jt.compile_extern.mkl_ops is None):  # a GPU process needs no oneDNN
        warnings.warn(SLOW_CPU_WARNING, stacklevel=2)
    jt.flags.use_cuda = 1 if on_cuda else 0
    _jt = jt
    return jt


def fast_cpu_path() -> bool:
    """True when Jittor's CPU conv/matmul go through oneDNN."""
    jt = load_jittor()
    return jt.compile_extern.mkl_ops is not None


def use_device(device: str) -> None:
    """Run this process's Jittor on `device` ("cpu" or "cuda"). Idempotent; asking for the other device
    later, or for CUDA where Jittor has none or its GPU path is not whole, raises DeviceUnavailable."""
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
    if device == "cuda":
        problems = gpu_path_problems(jt)
        if problems:
            jt.flags.use_cuda = 0
            raise DeviceUnavailable("a GPU was asked for but Jittor's GPU path is not whole: " + "; ".join(problems)
                                    + "; fix the CUDA set-up (README: The first GPU run), or run with --gpus cpu "
                                    "(log_silent=0 shows Jittor's own messages)")
        tune_cuda(jt)
    _device = device


def gpu_path_problems(jt) -> list:
    """What keeps `jt` (Jittor with use_cuda set) from running our models at full speed on the GPU; [] if
    nothing. Each missing library would otherwise be a silent fallback to Jittor's generic kernels."""
    problems = []
    if not jt.flags.use_cuda:
        problems.append("jt.flags.use_cuda did not stay on (Jittor sees no usable GPU)")
    extern = jt.compile_extern
    if getattr(extern, "cudnn", None) is None or getattr(extern, "cudnn_ops", None) is None:
        problems.append("cuDNN is not loaded (convolutions would run as generic kernels)")
    if getattr(extern, "cublas_ops", None) is None:
        problems.append("cuBLAS is not loaded (matrix products would run as generic kernels)")
    return problems


def tune_cuda(jt) -> None:
    """Settings every CUDA process needs: room for every conv's cuDNN algorithm, and fp32 accumulation.

    `use_tensorcore` is forced off: Jittor's flag turns fp16 matrix products to fp16 accumulation (without
    it cuBLAS already uses tensor cores with fp32 accumulation). cuDNN's algorithm cache is keyed by shapes
    alone, not dtype, so one process should not run the same conv shapes in two dtypes (the stages never
    do: the VAE's convs, in fp32, have other shapes than the UNet's).
    """
    jt.flags.use_tensorcore = 0
    resize = getattr(jt.compile_extern.cudnn, "set_algorithm_cache_size", None)
    if resize is None:  # not in this Jittor: each conv shape past the 100th re-chooses its algorithm per call
        warnings.warn("jstyleid: this Jittor cannot resize cuDNN's algorithm cache (100 entries); convolutions "
                      "beyond it are slower", stacklevel=2)
    else:
        resize(CONV_ALGO_CACHE)


def wait_device(results=None) -> None:
    """Compute `results` (a Var, or a list/tuple of Vars; None: every live Var) and wait until the device
    has finished. Jittor's `sync()`/`sync_all()` without `device_sync=True` only hand the kernels to CUDA,
    and a Var nobody evaluates is never computed: a timing must end with this."""
    jt = load_jittor()
    if results is None:
        jt.sync_all(True)
        return
    stack, found = [results], []
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, jt.Var):
            found.append(item)
    jt.sync(found, True)


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


def main() -> int:
    """`python -m common.jittor_env`: compile Jittor's core now, as the README's set-up does (not inside the
    first test or the first run), and say what this machine runs on."""
    jt = load_jittor()
    onednn = "yes" if fast_cpu_path() else "no (slow CPU path)"
    header = "yes" if kernel_header.install(jt) else "no"  # already there: this only checks it
    print(f"jstyleid: Jittor {jt.__version__} ready on {'cuda' if jt.flags.use_cuda else 'cpu'}; "
          f"oneDNN: {onednn}; precompiled kernel header: {header}; cache: {jittor_cache()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
