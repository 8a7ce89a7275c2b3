"""Jittor's CPU kernels parse a precompiled header (common/kernel_header.py): it must be used, generate the
same code as the plain headers, and never break a compile when it cannot be built."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from common import kernel_header
from common.devkit.kernel_compile import compile_kernel, code
from common.jittor_env import load_jittor


@pytest.fixture(scope="module")
def jt():
    """Jittor, with at least two fused kernels of ours in its cache."""
    if kernel_header.gpu_machine():
        pytest.skip("a GPU is installed here: the header stays out of nvcc's way")
    jt = load_jittor()
    a = jt.array(np.arange(6, dtype=np.float32).reshape(2, 3))
    ((a * 0.5).exp().maximum(a) - a.sqrt()).sum(dim=1).sync()
    (a.sigmoid() * a + 1).sync()
    return jt


def test_kernels_parse_the_precompiled_header_and_compile_to_the_same_code(jt, tmp_path):
    cache = Path(jt.flags.cache_path)
    assert kernel_header.install(jt) and (cache / "cmath.gch").is_file()
    source = kernel_header.kernels_using_header(cache)[0]
    _, used = compile_kernel(jt, source, tmp_path / "with.s", header=True)
    _, used_without = compile_kernel(jt, source, tmp_path / "without.s", header=False)
    assert used and not used_without
    assert code(tmp_path / "with.s") == code(tmp_path / "without.s")


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


def test_nothing_is_written_where_a_gpu_is(tmp_path, monkeypatch):
    assert not kernel_header.install(fake_jittor(tmp_path, "", has_cuda=True))
    monkeypatch.setattr(kernel_header.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert not kernel_header.install(fake_jittor(tmp_path, ""))  # a GPU machine running on its CPU
    assert list(tmp_path.iterdir()) == []


def test_the_benchmark_compiles_kernels_both_ways_to_the_same_code(jt, tmp_path):
    from benchmarks.kernel_compile import main
    main(["--kernels", "2", "--json", str(tmp_path / "out.json")])
    figures = json.loads((tmp_path / "out.json").read_text())
    assert figures["kernels_same_code"] == figures["kernels_using_header"] == figures["setup"]["kernels"] == 2
    assert figures["plain_s_per_kernel"] > 0 and figures["header_build_s"] > 0
