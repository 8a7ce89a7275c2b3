"""Jittor's CPU kernels parse a precompiled header (common/kernel_header.py): it must be used, generate the
same code as the plain headers, and never break a compile when it cannot be built."""
import re
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from common import kernel_header
from common.jittor_env import load_jittor

KERNEL_START = "\n#define JIT 1\n#define JIT_cpu 1\n#include <cmath>\n"


def compile_to_assembly(cc_flags: str, source: Path, output: Path) -> str:
    """Parse `source` as Jittor's compile of a kernel does (to assembly, -g); g++'s -H list of headers."""
    flags = [f for f in shlex.split(cc_flags) if f != "-shared" and not f.startswith(("-l", "-L"))]
    out = subprocess.run(["g++", str(source), *flags, "-H", "-w", "-S", "-g", "-o", str(output)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stderr


def instructions(assembly: Path) -> list:
    """The assembly without its directives and local labels (debug line numbers and file names)."""
    return [line for line in assembly.read_text().splitlines() if not re.match(r"\s*\.", line)]


def test_kernels_parse_the_precompiled_header_and_compile_to_the_same_code(tmp_path):
    jt = load_jittor()
    a = jt.array(np.arange(6, dtype=np.float32).reshape(2, 3))
    ((a * 0.5).exp().maximum(a) - a.sqrt()).sum(dim=1).sync()  # at least one fused kernel in the cache
    cache = Path(jt.flags.cache_path)
    assert kernel_header.install(jt) and (cache / "cmath.gch").is_file()
    source = next(p for p in sorted((cache / "jit").glob("*_op.cc")) if p.read_text().startswith(KERNEL_START))
    with_header = compile_to_assembly(jt.flags.cc_flags, source, tmp_path / "with.s")
    assert f"! {cache / 'cmath.gch'}" in with_header.splitlines()  # g++ marks a valid precompiled header "!"
    plain_folder = tmp_path / "plain"
    plain_folder.mkdir()
    (plain_folder / "cmath").write_text((cache / "cmath").read_text())  # the fallback only, no .gch
    plain_flags = jt.flags.cc_flags.replace(f'-I"{cache}"', f'-I"{plain_folder}"')
    assert plain_flags != jt.flags.cc_flags
    without_header = compile_to_assembly(plain_flags, source, tmp_path / "without.s")
    assert "! " not in without_header and "kernel_headers" not in without_header
    assert instructions(tmp_path / "with.s") == instructions(tmp_path / "without.s")


def fake_jittor(cache: Path, cc_flags: str, has_cuda=False):
    return SimpleNamespace(has_cuda=has_cuda, compiler=SimpleNamespace(cc_type="g++"),
                           flags=SimpleNamespace(cache_path=str(cache), cc_path="g++", cc_flags=cc_flags))


def test_built_once_per_set_of_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel_header, "KERNEL_HEADERS", ("<cmath>",))  # quick to build; no Jittor folders
    jt = fake_jittor(tmp_path, "-std=c++14 -fPIC")
    assert kernel_header.install(jt)
    built = tmp_path / "cmath.gch"
    first = built.stat().st_mtime_ns
    assert kernel_header.install(jt) and built.stat().st_mtime_ns == first  # same flags: not rebuilt
    jt.flags.cc_flags += " -DSOMETHING_ELSE=1"
    assert kernel_header.install(jt) and built.stat().st_mtime_ns != first
    assert [p.name for p in tmp_path.glob("pch-*")] == []  # its work folder is gone


def test_a_failed_build_warns_and_leaves_the_plain_headers(tmp_path):
    jt = fake_jittor(tmp_path, "-fno-such-option-for-gcc")
    with pytest.warns(UserWarning, match="could not precompile Jittor's kernel headers"):
        assert not kernel_header.install(jt)
    assert not (tmp_path / "cmath.gch").exists()
    assert (tmp_path / "cmath").read_text() == "#include_next <cmath>\n"


def test_nothing_is_written_for_cuda(tmp_path):
    assert not kernel_header.install(fake_jittor(tmp_path, "", has_cuda=True))
    assert list(tmp_path.iterdir()) == []
