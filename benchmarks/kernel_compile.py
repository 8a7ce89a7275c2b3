"""Compile time of Jittor's CPU kernels with our precompiled header and without it (docs/engine.md §12).

Takes up to --kernels N of the kernel sources in this machine's Jittor cache that begin as the header
needs (run the tests or the demo first to fill it), and parses each as Jittor does (g++ to assembly, -g),
alternately with the header and without it (the plain headers, as Jittor alone compiles), checking that
both give the same code (less debug information). Reports seconds per kernel each way, their ratio, and the header's
one-time build. Jittor's whole compile of a kernel adds its own steps (assembling, linking, loading),
the same either way.

    python benchmarks/kernel_compile.py --kernels 40 --json benchmarks/results/kernel_compile_cpu.json
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import report  # noqa: E402
from common import kernel_header  # noqa: E402
from common.devkit.kernel_compile import compile_kernel, code  # noqa: E402
from common.jittor_env import load_jittor  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=int, default=40, help="kernel sources to compile each way")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    jt = load_jittor(use_cuda=False)
    if not kernel_header.install(jt):
        sys.exit("kernel_compile: no precompiled header here (needs g++ and Jittor without CUDA)")
    sources = kernel_header.kernels_using_header(Path(jt.flags.cache_path))[:args.kernels]
    if not sources:
        sys.exit(f"kernel_compile: no kernel sources in {jt.flags.cache_path}/jit yet; run the tests or "
                 f"`python launch.py --demo` first")
    with_header, without_header, used, same = [], [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        error = kernel_header.build(jt.flags.cc_path, jt.flags.cc_flags, work)
        build_s = time.perf_counter() - start
        if error:
            sys.exit(f"kernel_compile: the header did not build: {error}")
        for i, source in enumerate(sources):
            order = (True, False) if i % 2 == 0 else (False, True)  # alternate, so drift hits both alike
            seconds = {header: compile_kernel(jt, source, work / f"{header}.s", header) for header in order}
            with_header.append(seconds[True][0])
            without_header.append(seconds[False][0])
            used += seconds[True][1] and not seconds[False][1]
            same += code(work / "True.s") == code(work / "False.s")
    plain_s, header_s = statistics.mean(without_header), statistics.mean(with_header)
    report({"kernels": len(sources), "cpus": os.cpu_count(), "jittor": jt.__version__},
           {"plain_s_per_kernel": plain_s, "header_s_per_kernel": header_s, "ratio_header_over_plain":
            header_s / plain_s, "header_build_s": build_s, "kernels_using_header": used,
            "kernels_same_code": same}, args.json)
    if same != len(sources) or used != len(sources):
        sys.exit("kernel_compile: some kernel did not use the header or compiled to other code")


if __name__ == "__main__":
    main()
