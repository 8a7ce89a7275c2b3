"""How every benchmark ends: its set-up on one line, a figure per line, and the same as JSON (--json)."""
import json
from pathlib import Path


def report(setup: dict, figures: dict, json_path=None):
    width = max(map(len, figures))
    print(" ".join(f"{k}={v}" for k, v in setup.items()))
    print(f"{'figure':<{width}}  value")
    for k, v in figures.items():
        print(f"{k:<{width}}  {v:10.3f}")
    if json_path:
        Path(json_path).write_text(json.dumps({"setup": setup, **figures}, indent=1))
