"""A precompiled header for Jittor's CPU kernels, so a cold kernel cache compiles faster.

Jittor compiles each new fused kernel with g++, and most of that time is g++ parsing the same ~74,000
lines of Jittor's headers (docs/engine.md §12). Most kernel sources begin `#define JIT 1`, `#define
JIT_cpu 1`, `#include <cmath>`, and g++ looks for `cmath.gch` in each `-I` folder before `cmath`; Jittor's
kernel cache folder is one of them. So we put there:
- `cmath.gch`: <cmath> and the Jittor headers most kernels include (`KERNEL_HEADERS`), precompiled with
  the kernels' own flags;
- `cmath`: `#include_next <cmath>`, what g++ reads instead wherever the precompiled header is not valid
  (other flags) or already used (a second `#include <cmath>`): the real header.
Jittor keys its kernels by their quoted includes only, so no compiled kernel goes stale, and the code
generated is the same (tests/test_kernel_header.py compares the assembly). Only for g++, on machines
without a GPU: nvcc, which compiles CUDA kernels with this folder on its include path, never meets it.
"""
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

# What kernel sources include most (counted over a test run), <cmath> first. Headers that define
# functions outside classes (type/fp16_compute.h) stay out, or every kernel would carry their code.
KERNEL_HEADERS = ("<cmath>", "<algorithm>", "<assert.h>", "<limits>", '"var.h"', '"ops/op_register.h"',
                  '"ops/broadcast_to_op.h"', '"ops/binary_op.h"', '"fused_op.h"', '"ops/array_op.h"',
                  '"ops/unary_op.h"', '"ops/reduce_op.h"')
SOURCE, BUILT, STAMP = "kernel_headers.h", "cmath.gch", "jstyleid-pch.txt"
KERNEL_START = "\n#define JIT 1\n#define JIT_cpu 1\n#include <cmath>\n"  # how most kernel sources begin


def compile_flags(cc_flags: str) -> list:
    """Jittor's kernel flags (`jt.flags.cc_flags`) as g++ parses a kernel with them: less the link ones."""
    return [f for f in shlex.split(cc_flags) if f != "-shared" and not f.startswith(("-l", "-L"))]


def header_command(cc_path: str, cc_flags: str) -> list:
    """The g++ command (run in a folder holding SOURCE) that precompiles it as Jittor's kernels are parsed:
    their flags, their JIT defines, and debug information (Jittor compiles a kernel to assembly with -g)."""
    return [cc_path, "-x", "c++-header", "-DJIT=1", "-DJIT_cpu=1", *compile_flags(cc_flags), "-g", SOURCE,
            "-o", BUILT]


def build(cc_path: str, cc_flags: str, folder: Path) -> str:
    """Precompile KERNEL_HEADERS into `folder`/BUILT, renamed into place whole; "" or g++'s first error."""
    with tempfile.TemporaryDirectory(dir=folder, prefix="pch-") as work:
        (Path(work) / SOURCE).write_text(_source())
        result = subprocess.run(header_command(cc_path, cc_flags), cwd=work, capture_output=True, text=True)
        if result.returncode != 0:
            plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr)  # Jittor's flags force colours on
            return next((line.strip() for line in plain.splitlines() if "error" in line), "no message")
        os.replace(Path(work) / BUILT, folder / BUILT)
    return ""


def install(jt) -> bool:
    """Make sure Jittor's kernel cache holds the precompiled header for `jt`'s flags; True when it does.
    A failed build warns, and kernels compile as before."""
    if jt.has_cuda or gpu_machine() or jt.compiler.cc_type != "g++":
        return False
    cache = Path(jt.flags.cache_path)
    recipe = f"{shlex.join(header_command(jt.flags.cc_path, jt.flags.cc_flags))}\n{_source()}"
    if (cache / BUILT).is_file() and _read(cache / STAMP) == recipe:
        return True
    _write_if_changed(cache / "cmath", "#include_next <cmath>\n")
    error = build(jt.flags.cc_path, jt.flags.cc_flags, cache)
    if error:
        (cache / BUILT).unlink(missing_ok=True)
        warnings.warn(f"jstyleid: could not precompile Jittor's kernel headers in {cache} ({error}); kernels "
                      f"compile without them, slower", stacklevel=2)
        return False
    (cache / STAMP).write_text(recipe)
    return True


def gpu_machine() -> bool:
    """True where an NVIDIA GPU is installed, even if this process does not use it: Jittor's nvcc compiles
    CUDA kernels there, with this cache folder on its include path, and the header stays out of its way.
    (Without a GPU, `load_jittor` hides nvcc: no CUDA kernel is compiled.)"""
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists()


def kernels_using_header(cache: Path) -> list:
    """The kernel sources in Jittor's cache folder `cache` that begin as the precompiled header needs."""
    return [p for p in sorted((cache / "jit").glob("*_op.cc")) if p.read_text().startswith(KERNEL_START)]


def _source() -> str:
    return "".join(f"#include {header}\n" for header in KERNEL_HEADERS)


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _write_if_changed(path: Path, text: str) -> None:
    if _read(path) != text:
        path.write_text(text)
