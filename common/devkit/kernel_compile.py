"""Parse one of Jittor's kernel sources as Jittor compiles it, with or without our precompiled header
(common/kernel_header.py): the test that compares the code generated and the benchmark that times both."""
import re
import subprocess
import time
from pathlib import Path

from common import kernel_header


def compile_kernel(jt, source: Path, output: Path, header: bool) -> tuple:
    """Compile `source` to assembly at `output` with `jt`'s kernel flags (Jittor's first step, -g); without
    `header`, the cache folder's -I is swapped for one holding only the fallback `cmath`. Returns (seconds,
    whether g++ used the precompiled header)."""
    cache, flags = Path(jt.flags.cache_path), jt.flags.cc_flags
    if not header:
        plain = output.parent / "plain-headers"
        plain.mkdir(exist_ok=True)
        (plain / "cmath").write_text((cache / "cmath").read_text())
        flags = flags.replace(f'-I"{cache}"', f'-I"{plain}"')
        assert flags != jt.flags.cc_flags, f"no -I for {cache} in Jittor's kernel flags"
    command = [jt.flags.cc_path, str(source), *kernel_header.compile_flags(flags), "-H", "-w", "-S", "-g",
               "-o", str(output)]
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"g++ failed on {source}: {out.stderr[-2000:]}")
    return seconds, f"! {cache / kernel_header.BUILT}" in out.stderr.splitlines()  # -H marks it "!"


def code(assembly: Path) -> list:
    """The assembly less its debug information (sections, line and file directives), local labels
    renumbered by first use: what must not change when only how the headers were parsed does."""
    lines, in_debug, labels = [], False, {}
    for line in assembly.read_text().splitlines():
        word = line.strip().split(",")[0]
        if word.startswith((".section", ".text", ".data", ".bss")):
            in_debug = word.startswith(".section") and ".debug" in word
        if in_debug or word.startswith((".loc", ".file", ".ident")):
            continue
        lines.append(re.sub(r"\.L[A-Za-z_]*\d+", lambda m: labels.setdefault(m.group(0), f".L{len(labels)}"), line))
    return lines
