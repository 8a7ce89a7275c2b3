"""The model a stage runs on: device and dtype, the style's weights on it, and refusing NaN outputs.

Both stages build their model here, so each rule lives once: the process's device is chosen once
(common.jittor_env.use_device), the CPU always runs float32, a device the engine cannot use becomes the
stage contract's DeviceError (the worker exits 3), and a style without a LoRA follows `lora.missing`.
"""
import warnings
from pathlib import Path
from typing import List, Optional

from common.config import RunConfig
from common.stage import DeviceError, Task
from common.style_files import lora_path, missing_lora_message


def model_dtype(config: RunConfig, device: str) -> str:
    """model.dtype on a GPU; float32 on the CPU, where float16 is slow and gains nothing."""
    return "float32" if device == "cpu" else config.model.dtype


def load_model(config: RunConfig, device: str, dtype: str = None):
    """This process's shared StableDiffusion on `device` (selected here, once per process), in `dtype`
    (default: model_dtype's rule)."""
    from common.jittor_env import DeviceUnavailable, use_device
    from common.sd.model_source import options_of
    from common.sd.pipeline import StableDiffusion
    try:
        use_device(device)
        return StableDiffusion.shared(config.model.path, dtype or model_dtype(config, device), device,
                                      options_of(config.model))
    except DeviceUnavailable as e:
        raise DeviceError(str(e)) from e


class StyleWeights:
    """Puts a style's weights on a stage's model: the style's LoRA at lora.scale, or the base model.

    Stages apply them on every run: another stage sharing the process's model may have changed them since.
    """

    def __init__(self, sd, config: RunConfig):
        self.sd, self.config = sd, config
        self._warned = set()

    def apply(self, style: str, use_lora: bool = True) -> Optional[Path]:
        """Apply the style's LoRA (or the base model when not `use_lora`); return the LoRA file applied.

        Without a LoRA file, lora.missing decides: `warn` uses the base model (warning once per style);
        `error` raises, and so does `train` (the train stage writes the file before generation runs).
        """
        path = lora_path(self.config, style) if use_lora else None
        if use_lora and path is None:
            if self.config.lora.missing != "warn":
                raise FileNotFoundError(missing_lora_message(self.config, style))
            if style not in self._warned:
                self._warned.add(style)
                warnings.warn(missing_lora_message(self.config, style, fatal=False), stacklevel=2)
        self.sd.set_lora(path, self.config.lora.scale if path else 0.0)
        return path


def nonfinite_error(tasks: List[Task], error, config: RunConfig, lora: Optional[Path]) -> ValueError:
    """The one-line error for outputs with NaN/inf (`error`: common.sd.pipeline.NonFiniteError of a batch
    of `tasks`), naming each task and the weights that produced it."""
    names = "; ".join(f"style {tasks[i].style}, prompt {tasks[i].prompt!r}" for i in error.indices)
    model = f"the model weights ({config.model.path})"
    weights = f"the LoRA {lora} or {model}" if lora else model
    return ValueError(f"{names}: the {error.what} has NaN/inf values, so nothing was written; {weights} give "
                      "non-finite outputs: check or replace them")
