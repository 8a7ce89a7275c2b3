"""Read the tensors of a TorchScript archive (`torch.jit.save`, e.g. CLIP's `RN50.pt`) without torch.

A TorchScript archive is a torch zip whose `data.pkl` pickles the module tree: each module an object of a
`__torch__.*` class whose state is a dict of its attributes (submodules, parameters, buffers, flags). The
restricted unpickler of `common/sd/weights.py` reads it with one more kind of global allowed: any
`__torch__.*` class becomes an inert attribute holder (no code of the archive runs, its `code/` folder is
never read). The tensors are collected by their attribute paths, which are the module's state-dict keys,
and go through the same checks as a `.bin` (storages against their zip members, views against storages).
"""
import re
from pathlib import Path

import numpy as np

from common.sd.weights import (_MAX_INDEX, _Refused, _Unpickler, _View, _check_view, _guarded, _prescan,
                               _short, _torch_zip)

_SCRIPT_CLASS = re.compile(r"__torch__(\.[A-Za-z_][A-Za-z0-9_]*)+")
_MAX_DEPTH = 64  # module nesting; far deeper than any network
# helpers TorchScript's pickler names for typed lists; each takes the list and returns it
_LIST_HELPERS = {"build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag"}


class _ScriptObject:
    """A module (or other TorchScript object) of the archive: its attributes, nothing else."""

    def __setstate__(self, state):
        if not isinstance(state, dict) or not all(type(k) is str for k in state):
            raise _Refused(f"a TorchScript object's state is {_short(type(state).__name__)}, not a dict of "
                           "attributes")
        self.attributes = state


def _list_helper(value, *_):
    return value


class _ScriptUnpickler(_Unpickler):
    def find_class(self, module, name):
        qualified = f"{module}.{name}"
        if _SCRIPT_CLASS.fullmatch(qualified) and len(qualified) < 1000:
            return _ScriptObject
        if module == "torch.jit._pickle" and name in _LIST_HELPERS:
            return _list_helper
        return super().find_class(module, name)


def _tensors(root) -> dict:
    """{dotted attribute path: _View} of every tensor reachable through modules' attributes."""
    found, seen = {}, set()
    stack = [("", root, 0)]
    while stack:
        prefix, obj, depth = stack.pop()
        if id(obj) in seen or depth > _MAX_DEPTH:
            continue
        seen.add(id(obj))
        for name, value in getattr(obj, "attributes", {}).items():
            key = f"{prefix}{name}"
            if isinstance(value, _View):
                found[key] = value
            elif isinstance(value, _ScriptObject):
                stack.append((key + ".", value, depth + 1))
    return found


def _script_state(data: bytes):
    _prescan(data)
    unpickler = _ScriptUnpickler(data)
    root = unpickler.load()
    if not isinstance(root, _ScriptObject):
        raise _Refused(f"data.pkl holds a {_short(type(root).__name__)}, not a TorchScript module",
                       "not a TorchScript archive: pass the .pt file torch.jit.save wrote")
    state = _tensors(root)
    for name, view in state.items():
        _check_view(name, view)
    if sum(view.storage.numel for view in {v.storage.key: v for v in state.values()}.values()) >= _MAX_INDEX:
        raise _Refused("its storages claim more values than any file holds")
    return state, unpickler.storages


def read_torchscript(path) -> dict:
    """{state-dict key: np.ndarray} of a TorchScript archive, dtypes as stored; one-line WeightFileError
    naming the file for anything it cannot read safely."""
    return _guarded(Path(path), _not_torchscript, lambda p: _torch_zip(p, load=True, parse=_script_state))


def _not_torchscript(path):
    raise _Refused("a .safetensors file is not a TorchScript archive", "pass the .pt file torch.jit.save wrote")


def save_module_tree(state: dict, path) -> None:
    """Write {dotted key: np.ndarray} in a TorchScript archive's data layout (a module tree of `__torch__`
    objects over torch storages) that `read_torchscript` reads. It holds no code, so torch.jit.load does
    not: the development kit's random-weight stand-in for files only our reader needs to open."""
    import io
    import pickle
    import sys
    import zipfile

    from common.sd.weights import _little_endian_bytes, _Pickler, _Storage, _TensorRef, _torch_global

    module_class = _torch_global("__torch__.jstyleid", "Module")
    root, storages = module_class(), []
    for key, array in state.items():
        node, *path_parts = root, *key.split(".")
        for part in path_parts[:-1]:
            node = node.__dict__.setdefault(part, module_class())
        storage = _Storage(str(len(storages)), np.array(array, order="C"))
        storages.append(storage)
        setattr(node, path_parts[-1], _TensorRef(storage))

    class ScriptPickler(_Pickler):
        def save_global(self, obj, name=None):
            if obj is module_class:
                self.write(pickle.GLOBAL + f"{obj.__module__}\n{obj.__qualname__}\n".encode())
                self.memoize(obj)
                return
            super().save_global(obj, name)

    buffer = io.BytesIO()
    ScriptPickler(buffer, protocol=2).dump(root)
    name = Path(path).name.split(".")[0] or "archive"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}/data.pkl", buffer.getvalue())
        archive.writestr(f"{name}/byteorder", sys.byteorder)
        for s in storages:
            archive.writestr(f"{name}/data/{s.key}", _little_endian_bytes(s.array))
        archive.writestr(f"{name}/version", "3\n")
