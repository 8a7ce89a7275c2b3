"""Read a TorchScript archive's parameters and buffers without torch and without running its code.

A TorchScript archive (`torch.jit.save`, e.g. CLIP's `RN50.pt`) is a zip whose `data.pkl` pickles the
module tree: each module is `__torch__.<module>.<Class>` rebuilt by NEWOBJ + BUILD from a dict of its
attributes (tensors as in a `torch.save` file, submodules, flags). Which attributes are parameters or
buffers is declared only in the class's source, `code/__torch__/<module path>.py`, by the lines
`__parameters__ = [...]` and `__buffers__ = [...]`; those lines are matched as text, never run.

The result is the module's `state_dict()` with dotted names. Every storage and view gets the checks of
`common/sd/weights.py` before any data is read, so a crafted archive is a one-line `WeightFileError`.
"""
import io
import pickle
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

from common.sd import weights
from common.sd.weights import _Refused, _short

_MAX_CODE_BYTES = 4 << 20  # a class's source is a few KB
_MAX_DEPTH = 64  # module nesting; real models nest under ten levels
_CLASS = re.compile(r"^class (\w+)\(")
_SLOTS = re.compile(r"^\s+__(parameters|buffers)__ = \[(.*)\]\s*$")
_LISTS = ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist", "build_stringlist")


class _ScriptObject:
    """A module as data.pkl rebuilds it: its class's qualified name and its attribute dict."""
    qualname = None

    def __setstate__(self, state):
        if not isinstance(state, dict) or not all(type(k) is str for k in state):
            raise _Refused(f"module {_short(self.qualname)} has attributes {_short(type(state).__name__)}, "
                           "not a dict of names")
        self.attributes = state


class _ScriptUnpickler(weights._Unpickler):
    """The state-dict unpickler, also allowing `__torch__.*` module classes and TorchScript's list builders."""

    def find_class(self, module, name):
        if type(module) is str and (module == "__torch__" or module.startswith("__torch__.")):
            return type("ScriptModule", (_ScriptObject,), {"qualname": (module, name)})
        if module == "torch.jit._pickle" and name in _LISTS:
            return list
        return super().find_class(module, name)


def read_torchscript(path) -> dict:
    """{dotted name: np.ndarray} of the archive's parameters and buffers, as `state_dict()` names them."""
    return weights._guarded(path, _not_torchscript, lambda p: _archive(p, load=True))


def inspect_torchscript(path) -> dict:
    """{dotted name: (np.dtype, shape)} as `read_torchscript` would return them, reading no tensor data."""
    return weights._guarded(path, _not_torchscript, lambda p: _archive(p, load=False))


def _not_torchscript(path: Path):
    raise _Refused("a .safetensors file is not a TorchScript archive", "point at the TorchScript .pt file")


def _archive(path: Path, load: bool) -> dict:
    if not zipfile.is_zipfile(path):
        raise _Refused("not a TorchScript archive (not a zip)", "download the model file again")
    file_size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        prefix, root = _load_tree(archive, file_size)
        state = {}
        _collect(archive, prefix, root, "", state, {}, set(), 0)
        for name, view in state.items():
            weights._check_view(name, view)
        storages = {view.storage.key: view.storage for view in state.values()}
        for ref in storages.values():
            weights._checked_member(archive, f"{prefix}data/{ref.key}", ref.numel * ref.kind.dtype.itemsize,
                                    file_size)
        if not load:
            return {name: (weights._native(v.storage.kind), tuple(v.size)) for name, v in state.items()}
        order = weights._byte_order(archive, prefix)
        arrays = {}
        for key, ref in storages.items():
            array = np.frombuffer(archive.read(f"{prefix}data/{key}"), ref.kind.dtype.newbyteorder(order))
            arrays[key] = weights._widen_bfloat16(array) if ref.kind.name == "BFloat16Storage" else array
    return {name: weights._materialize(arrays[v.storage.key], v) for name, v in state.items()}


def _load_tree(archive: zipfile.ZipFile, file_size: int):
    """(folder prefix inside the zip, the root _ScriptObject) from the zip's one data.pkl."""
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise _Refused(f"expected one data.pkl in the zip, found {len(pickles)}", "download the model file again")
    info = archive.getinfo(pickles[0])
    if info.file_size > weights._MAX_PICKLE_BYTES:
        raise _Refused(f"data.pkl declares {info.file_size} bytes, more than any module's pickle")
    weights._checked_member(archive, info.filename, info.file_size, file_size)
    data = archive.read(info)
    weights._prescan(data)
    root = _ScriptUnpickler(data).load()
    if not isinstance(root, _ScriptObject) or not hasattr(root, "attributes"):
        raise _Refused("data.pkl does not hold a TorchScript module", "download the model file again")
    return info.filename[:-len("data.pkl")], root


def _declared(archive: zipfile.ZipFile, prefix: str, qualname, cache: dict) -> set:
    """Names of the parameters and buffers that class `qualname` declares in its source file."""
    if qualname in cache:
        return cache[qualname]
    module, name = qualname
    if type(name) is not str or not re.fullmatch(r"[\w.]+", module):
        raise _Refused(f"the pickle names class {_short(qualname)}, not a TorchScript module class")
    source = f"{prefix}code/{module.replace('.', '/')}.py"
    try:
        info = archive.getinfo(source)
    except KeyError:
        raise _Refused(f"class {_short(module + '.' + name)} has no source {_short(source)} in the zip") from None
    with archive.open(info) as member:  # torch deflates sources: read no more than a source can hold
        text = member.read(_MAX_CODE_BYTES + 1)
    if len(text) > _MAX_CODE_BYTES:
        raise _Refused(f"{_short(source)} holds more than {_MAX_CODE_BYTES} bytes, more than any class source")
    current, names = None, set()
    for line in text.decode("utf-8", "replace").splitlines():
        match = _CLASS.match(line)
        if match:
            current = match.group(1)
        elif current == name and _SLOTS.match(line):
            names.update(re.findall(r'"([^"]*)"', _SLOTS.match(line).group(2)))
    cache[qualname] = names
    return names


def _collect(archive, prefix, obj, path, state, cache, seen, depth) -> None:
    """Add `obj`'s declared tensors to `state` as path+name, then recurse into its submodules."""
    if id(obj) in seen or depth > _MAX_DEPTH:
        raise _Refused(f"module {_short(path or 'root')} is nested too deep or contains itself")
    seen.add(id(obj))
    if not hasattr(obj, "attributes"):
        raise _Refused(f"module {_short(path or 'root')} has no attributes")
    declared = _declared(archive, prefix, obj.qualname, cache)
    for name, value in obj.attributes.items():
        if isinstance(value, _ScriptObject):
            _collect(archive, prefix, value, f"{path}{name}.", state, cache, seen, depth + 1)
        elif name in declared and value is not None:
            if not isinstance(value, weights._View):
                raise _Refused(f"{_short(path + name)} is declared a parameter but holds "
                               f"{_short(type(value).__name__)}, not a tensor")
            state[path + name] = value


def save_module_tree(state: dict, path) -> None:
    """Write {dotted key: np.ndarray} as a TorchScript archive's data: a tree of `__torch__.jstyleid.Module`
    objects over torch storages, and that class's source holding only its `__parameters__` line (every
    tensor's leaf name), which is what `read_torchscript` reads. It holds no methods, so torch.jit.load
    does not open it: the development kit's random-weight stand-in for files only our reader opens."""
    module_class = weights.named_global("__torch__.jstyleid", "Module")
    root, storages = module_class(), []
    for key, array in state.items():
        node, *parts = root, *key.split(".")
        for part in parts[:-1]:
            node = node.__dict__.setdefault(part, module_class())
        storages.append(weights._Storage(str(len(storages)), np.array(array, order="C")))
        setattr(node, parts[-1], weights._TensorRef(storages[-1]))

    class ScriptPickler(weights._Pickler):
        def save_global(self, obj, name=None):
            if obj is module_class:
                self.write(pickle.GLOBAL + f"{obj.__module__}\n{obj.__qualname__}\n".encode())
                self.memoize(obj)
                return
            super().save_global(obj, name)

    buffer = io.BytesIO()
    ScriptPickler(buffer, protocol=2).dump(root)
    leaves = sorted({key.rsplit(".", 1)[-1] for key in state})
    source = "class Module(Module):\n  __parameters__ = [" + "".join(f'"{n}", ' for n in leaves) + "]\n"
    name = Path(path).name.split(".")[0] or "archive"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}/data.pkl", buffer.getvalue())
        archive.writestr(f"{name}/code/__torch__/jstyleid.py", source)
        archive.writestr(f"{name}/byteorder", sys.byteorder)
        for s in storages:
            archive.writestr(f"{name}/data/{s.key}", weights._little_endian_bytes(s.array))
        archive.writestr(f"{name}/version", "3\n")
