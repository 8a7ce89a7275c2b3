"""Read checkpoint tensors without torch, and load them into our modules by exact name.

Two file kinds reach us: `.safetensors` (read with `safetensors.numpy`) and PyTorch's zip `.bin`
(`torch.save`/`jittor.save`, e.g. JDiffusion's `pytorch_lora_weights.bin`). A zip `.bin` is a pickle
whose tensors point at raw little-endian storages `archive/data/<key>` in the same zip; a restricted
unpickler rebuilds them as NumPy arrays and refuses any other global, so a `.bin` cannot run code.
(`jittor.load` reads the format too but returns Vars, and `jittor.save` imports torch to write it.)
"""
import collections
import io
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np

_STORAGE_DTYPES = {
    "HalfStorage": np.float16, "BFloat16Storage": np.uint16, "FloatStorage": np.float32,
    "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_STORAGE_NAMES = {np.dtype(v).name: k for k, v in _STORAGE_DTYPES.items() if k != "BFloat16Storage"}


class WeightFileError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model (message names file and fix)."""


def read_weights(path) -> dict:
    """{name: np.ndarray} of a `.safetensors` or torch-zip `.bin`/`.pt`/`.pth` file, dtypes as stored."""
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"{path}: weight file not found; check the model or LoRA path")
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.numpy import load_file
            return load_file(str(path))
        return _read_torch_zip(path)
    except WeightFileError:
        raise
    except Exception as e:  # corrupt/truncated files fail deep inside the readers
        raise WeightFileError(f"{path}: cannot read weights ({type(e).__name__}: {e}); the file is corrupt "
                              "or truncated: download or save it again") from e


class _Unpickler(pickle.Unpickler):
    """Rebuilds torch tensors as NumPy arrays from the zip's storages; allows no other globals."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"unsupported object {module}.{name} in a weights pickle")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
            if array.size != numel:
                raise pickle.UnpicklingError(f"storage {key} holds {array.size} values, expected {numel}")
            if dtype is np.uint16:  # bfloat16: the high half of a float32
                array = (array.astype(np.uint32) << 16).view(np.float32)
            self.storages[key] = array
        return self.storages[key]


def _rebuild_tensor(storage, offset, size, stride, *_):
    itemsize = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")


def _read_torch_zip(path: Path) -> dict:
    if not zipfile.is_zipfile(path):
        raise WeightFileError(f"{path}: not a PyTorch zip checkpoint (legacy torch<1.6 pickles are unsupported); "
                              "re-save it with torch.save or convert it to .safetensors")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise WeightFileError(f"{path}: expected one data.pkl in the zip, found {len(pickles)}; "
                                  "not a torch.save file: re-save it")
        prefix = pickles[0][:-len("data.pkl")]
        state = _Unpickler(archive.read(pickles[0]), archive, prefix).load()
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise WeightFileError(f"{path}: expected a flat {{name: tensor}} state dict; save the state_dict only")
    return dict(state)


class _Storage:
    """Pickles as a persistent reference to one tensor's raw data."""

    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


def _torch_global(module, name):
    """A stand-in class whose pickle reference is `module.name` (what torch.load looks up)."""
    stub = type(name, (), {})
    stub.__module__, stub.__qualname__, stub.__name__ = module, name, name
    return stub


_REBUILD = _torch_global("torch._utils", "_rebuild_tensor_v2")
_STORAGE_STUBS = {k: _torch_global("torch", k) for k in _STORAGE_NAMES.values()}


class _TensorRef:
    def __init__(self, storage: _Storage):
        self.storage = storage

    def __reduce__(self):
        shape = self.storage.array.shape
        stride = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
        return _REBUILD, (self.storage, 0, shape, stride, False, collections.OrderedDict())


class _Pickler(pickle._Pickler):  # the Python pickler: its save_global can name torch without importing it
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            dtype = _STORAGE_STUBS[_STORAGE_NAMES[obj.array.dtype.name]]
            return ("storage", dtype, obj.key, "cpu", obj.array.size)
        return None

    def save_global(self, obj, name=None):
        if obj is _REBUILD or any(obj is s for s in _STORAGE_STUBS.values()):
            self.write(pickle.GLOBAL + f"{obj.__module__}\n{obj.__qualname__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def save_torch_zip(state: dict, path) -> None:
    """Write {name: np.ndarray} as a torch zip checkpoint that `torch.load` (weights_only too) reads."""
    path = Path(path)
    storages = [_Storage(str(i), np.array(a, order="C")) for i, a in enumerate(state.values())]
    tree = collections.OrderedDict((k, _TensorRef(s)) for k, s in zip(state, storages))
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(tree)
    root = path.name.split(".")[0] or "archive"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{root}/data.pkl", buffer.getvalue())
        archive.writestr(f"{root}/byteorder", sys.byteorder)
        for s in storages:
            archive.writestr(f"{root}/data/{s.key}", s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())
        archive.writestr(f"{root}/version", "3\n")


def load_state_dict(module, state: dict, source, ignore=("position_ids",)) -> None:
    """Copy `state` into `module`'s Vars by exact name; cast to each Var's dtype (fp16 files → fp32 models).

    Any missing key, unexpected key (other than names ending in `ignore`) or shape mismatch raises one
    line naming `source`, the first offending keys and what to do.
    """
    params = module.state_dict()
    unexpected = [k for k in state if k not in params and not k.endswith(tuple(ignore))]
    missing = [k for k in params if k not in state]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(params[k].shape)}"
              for k in params if k in state and tuple(state[k].shape) != tuple(params[k].shape)]
    hint = ("the file does not belong to this model type or its config.json (wrong component, "
            "unsupported model, or mismatched config): use the weights that ship with this config")
    for problem, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                          ("shape mismatches", shapes)):
        if keys:
            raise WeightFileError(f"{source}: {len(keys)} {problem} for {type(module).__name__} "
                                  f"(e.g. {', '.join(keys[:3])}); {hint}")
    from common.jittor_env import load_jittor
    jt = load_jittor()
    for name, var in params.items():
        var.update(jt.array(np.asarray(state[name]).astype(str(var.dtype), copy=False)))
