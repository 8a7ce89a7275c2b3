"""Atomic writes give outputs the mode any other tool would: 0666 less the umask (a temp file from mkstemp
is 0600, which once made every result unreadable to other users)."""
import subprocess
import sys

import pytest

from queue_fixtures import REPO

WRITE = """
import os, stat, sys
os.umask(int(sys.argv[1], 8))
import numpy as np
from common.atomic import write_bytes, write_npy, write_png
out = sys.argv[2]
write_png(out + "/a.png", np.zeros((2, 2, 3), np.uint8), fsync=False)
write_npy(out + "/a.npy", np.zeros(3, np.float32), fsync=False)
write_bytes(out + "/a.json", b"{}", fsync=True)
print(" ".join(oct(stat.S_IMODE(os.stat(out + "/a." + e).st_mode)) for e in ("png", "npy", "json")))
"""


@pytest.mark.parametrize("umask, mode", [("022", "0o644"), ("077", "0o600"), ("002", "0o664")])
def test_outputs_honour_the_umask(tmp_path, umask, mode):
    # A process reads its umask once, at import (reading it means setting it): each case is a new process.
    out = subprocess.run([sys.executable, "-c", WRITE, umask, str(tmp_path)], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [mode] * 3
