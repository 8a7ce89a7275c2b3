"""Shared pytest fixtures (keep small and additive)."""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (str(REPO), str(REPO / "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)
os.environ.setdefault("JSTYLEID_FAKE_MS", "0")  # the job-system tests' stand-in stages: no sleep
