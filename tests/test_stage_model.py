"""The stages' shared model rules: dtype by device, the style's weights by lora.missing, device errors, NaN errors."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from common.config import load_config
from common.stage import Task
from common.stage_model import StyleWeights, model_dtype, nonfinite_error

ROOT = Path(__file__).resolve().parents[1]


class _Model:
    """Records set_lora calls, as StableDiffusion.set_lora takes them."""

    def __init__(self):
        self.calls = []

    def set_lora(self, path=None, scale=1.0):
        self.calls.append((path, scale))


def _config(tmp_path, **lora):
    folder = tmp_path / "loras" / "style_00"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    return load_config(None, {"lora.dir": str(tmp_path / "loras"), **{f"lora.{k}": v for k, v in lora.items()}})


def test_the_cpu_runs_float32_and_a_gpu_the_model_dtype():
    config = load_config(None, {"model.dtype": "float16"})
    assert (model_dtype(config, "cpu"), model_dtype(config, "cuda")) == ("float32", "float16")


def test_a_style_gets_its_lora_at_the_scale_or_the_base_model(tmp_path):
    model = _Model()
    weights = StyleWeights(model, _config(tmp_path, scale=0.6))
    lora = tmp_path / "loras" / "style_00" / "pytorch_lora_weights.safetensors"
    assert weights.apply("00") == lora
    assert weights.apply("00", use_lora=False) is None
    assert model.calls == [(lora, 0.6), (None, 0.0)]


@pytest.mark.parametrize("missing", ["error", "train"])
def test_without_a_lora_error_and_train_refuse_and_change_nothing(tmp_path, missing):
    model = _Model()
    with pytest.raises(FileNotFoundError, match=r"style_01: no LoRA for style 01"):
        StyleWeights(model, _config(tmp_path, missing=missing)).apply("01")
    assert model.calls == []


def test_without_a_lora_warn_uses_the_base_model_warning_once_per_style(tmp_path):
    model = _Model()
    weights = StyleWeights(model, _config(tmp_path, missing="warn"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [weights.apply(s) for s in ("01", "01", "02")] == [None, None, None]
    folders = [str(w.message).split(":")[0] for w in caught]
    assert folders == [str(tmp_path / "loras" / f"style_{s}") for s in ("01", "02")]
    assert model.calls == [(None, 0.0)] * 3


def test_the_nonfinite_error_names_each_task_and_the_weights(tmp_path):
    from common.sd.pipeline import NonFiniteError
    tasks = [Task(id=str(i), style="00", prompt=p, name=p, seed=0, style_dir=tmp_path)
             for i, p in enumerate(["Dolphin", "Cat"])]
    config = load_config(None, {"model.path": "/models/sd21"})
    message = str(nonfinite_error(tasks, NonFiniteError("latent", [1]), config, Path("/l/x.bin")))
    assert message.startswith("style 00, prompt 'Cat': the latent has NaN/inf values")
    assert "Dolphin" not in message and "/l/x.bin" in message and "/models/sd21" in message
    assert "LoRA" not in str(nonfinite_error(tasks, NonFiniteError("latent", [0]), config, None))


def test_a_gpu_stage_without_cuda_raises_device_error_and_the_device_is_chosen_once(tiny_model_dir):
    """The real stages on "cuda" where Jittor has no CUDA (the worker turns DeviceError into exit 3)."""
    code = "\n".join([
        "import sys",
        "from common.config import load_config",
        "from common.jittor_env import DeviceUnavailable, load_jittor, use_device",
        "from common.stage import DeviceError",
        "from consumer.stage import ConsumerStage",
        "from producer.stage import ProducerStage",
        "config = load_config(None, {'model.path': sys.argv[1]})",
        "for stage in (ProducerStage, ConsumerStage):",
        "    try:",
        "        stage(config, 'cuda')",
        "    except DeviceError as e:",
        "        print('DeviceError', type(e.__cause__).__name__, 'no CUDA' in str(e))",
        "use_device('cpu'); use_device('cpu')",
        "try:",
        "    use_device('cuda')",
        "except DeviceUnavailable as e:",
        "    print('refused', 'already runs Jittor on cpu' in str(e), load_jittor().flags.use_cuda)",
    ])
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-3:] == ["DeviceError DeviceUnavailable True"] * 2 + ["refused True 0"]
