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
generated is the same (tests/test_kernel_header.py compares the assembly). Only for g++ without CUDA:
nvcc compiles CUDA kernels, with other flags.
"""
import os
import re
import shlex
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


def header_command(cc_path: str, cc_flags: str) -> list:
    """The g++ command (run in a folder holding SOURCE) that precompiles it as Jittor's kernels are parsed:
    their compile flags less the link ones, their JIT defines, and debug information (Jittor compiles a
    kernel to assembly with -g first)."""
    compile_flags = [f for f in shlex.split(cc_flags) if f != "-shared" and not f.startswith(("-l", "-L"))]
    return [cc_path, "-x", "c++-header", "-DJIT=1", "-DJIT_cpu=1", *compile_flags, "-g", SOURCE, "-o", BUILT]


def install(jt) -> bool:
    """Make sure Jittor's kernel cache holds the precompiled header for `jt`'s flags; True when it does.
    A failed build warns, and kernels compile as before."""
    if jt.has_cuda or jt.compiler.cc_type != "g++":
        return False
    cache = Path(jt.flags.cache_path)
    command = header_command(jt.flags.cc_path, jt.flags.cc_flags)
    source = "".join(f"#include {header}\n" for header in KERNEL_HEADERS)
    recipe = f"{shlex.join(command)}\n{source}"
    if (cache / BUILT).is_file() and _read(cache / STAMP) == recipe:
        return True
    _write_if_changed(cache / "cmath", "#include_next <cmath>\n")
    with tempfile.TemporaryDirectory(dir=cache, prefix="pch-") as tmp:
        (Path(tmp) / SOURCE).write_text(source)
        result = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
        if result.returncode != 0:
            (cache / BUILT).unlink(missing_ok=True)
            plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr)  # g++ runs with colours forced on
            error = next((line for line in plain.splitlines() if "error" in line), "no message")
            warnings.warn(f"jstyleid: could not precompile Jittor's kernel headers in {cache} ({error.strip()}); "
                          f"kernels compile without them, slower", stacklevel=2)
            return False
        os.replace(Path(tmp) / BUILT, cache / BUILT)
    (cache / STAMP).write_text(recipe)
    return True


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _write_if_changed(path: Path, text: str) -> None:
    if _read(path) != text:
        path.write_text(text)
