"""Shared pytest fixtures (keep small and additive)."""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (str(REPO), str(REPO / "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)
os.environ.setdefault("JSTYLEID_FAKE_MS", "0")  # the job-system tests' stand-in stages: no sleep

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny SD-2.1-shaped diffusers folder (common.devkit.tiny_model), with LoRAs for styles 00 (.safetensors)
    and 01 (.bin) under loras/style_NN/; written once per test session."""
    from common.devkit.tiny_model import write_tiny_model
    folder = tmp_path_factory.mktemp("tiny") / "tiny-sd21"
    write_tiny_model(folder, ["00"])
    write_tiny_model(folder, ["01"], lora_format="bin")
    return folder


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """The same tiny model written without Jittor (tests/model_files.py), with LoRAs for styles 00 and 01
    (.safetensors) under loras/style_NN/: for the launch checks. Read-only: copy before breaking a file."""
    from model_files import write_model
    return write_model(tmp_path_factory.mktemp("tiny-files") / "tiny-sd21", ["00", "01"])
