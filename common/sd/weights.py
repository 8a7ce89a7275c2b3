"""Read checkpoint tensors without torch, and load them into our modules by exact name.

Two file kinds reach us: `.safetensors` (read with `safetensors.numpy`) and PyTorch's zip `.bin`
(`torch.save`/`jittor.save`, e.g. JDiffusion's `pytorch_lora_weights.bin`). A zip `.bin` is a pickle
whose tensors point at raw little-endian storages `archive/data/<key>` in the same zip; a restricted
unpickler rebuilds them as NumPy arrays and refuses any other global, so a `.bin` cannot run code.
Files saved by torch < 1.6 (torchvision's older ImageNet weights, the LPIPS heads) use the legacy
layout instead: a few pickles back to back, then each storage as an int64 count and its raw bytes; the
same unpickler reads them, and each storage's count and extent are checked before any data is read.
(`jittor.load` reads the format too but returns Vars, and `jittor.save` imports torch to write it.)

Nothing in a file is trusted. Before any tensor data is read, every storage the pickle declares is
checked against the zip member that holds it (present, uncompressed, exactly its declared size, inside
the file) and every tensor's offset, size and stride against its storage, so a crafted file gets a
one-line `WeightFileError` instead of a crash or an allocation sized by its claims. `inspect_weights`
runs those checks alone (safetensors: the library's header checks), for launch-time validation.

A training checkpoint (`.ckpt`, PyTorch Lightning's) wraps its `state_dict` in other objects (epoch,
callbacks, optimizer states). With `checkpoint=True` a global the pickle names outside the tensor machinery
becomes an inert stand-in (nothing is imported or called) and only the `state_dict` is read.
`open_weights` reads one tensor at a time on demand, so loading a model never holds a second copy of it.
"""
import collections
import io
import json
import math
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

_STORAGE_DTYPES = {
    "HalfStorage": np.float16, "BFloat16Storage": np.uint16, "FloatStorage": np.float32,
    "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_STORAGE_NAMES = {np.dtype(v).name: k for k, v in _STORAGE_DTYPES.items() if k != "BFloat16Storage"}
# safetensors dtype names NumPy can hold; bfloat16 is widened to float32, as for .bin files
_SAFETENSORS_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16, "I32": np.int32,
    "U32": np.uint32, "I64": np.int64, "U64": np.uint64, "F16": np.float16, "BF16": np.float32,
    "F32": np.float32, "F64": np.float64,
}
_MAX_PICKLE_BYTES = 64 << 20  # a whole SD UNet's data.pkl is ~100 KB
_MAX_INDEX = 1 << 62  # no real size, stride or offset comes near; keeps byte arithmetic inside int64
_MAX_DIMS = 32  # NumPy's limit
_DAMAGED = "the file is damaged or was not written by torch.save: download or save it again"


class WeightFileError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model (message names file and fix)."""


class _Refused(Exception):
    """Why a file is refused and what to do; `_guarded` prefixes the file name."""

    def __init__(self, why: str, fix: str = _DAMAGED):
        super().__init__(f"{why}; {fix}")


def read_weights(path) -> dict:
    """{name: np.ndarray} of a `.safetensors` or torch-zip `.bin`/`.pt`/`.pth` file, dtypes as stored
    (bfloat16 widened to float32)."""
    return _guarded(path, _read_safetensors, lambda p: _torch_zip(p, load=True))


def inspect_weights(path, checkpoint: bool = False) -> dict:
    """{name: (np.dtype, shape)} as `read_weights` would return them, from the headers alone.

    Reads no tensor data (zip: the pickle, with each storage checked against its member's size;
    safetensors: the header, with offsets checked against the file size), so a launcher can check many
    files cheaply; a file it accepts can still fail to read if its data bytes are damaged. `checkpoint`:
    a torch zip may be a training checkpoint (see the module docstring); its state_dict is inspected.
    """
    return _guarded(path, _inspect_safetensors, lambda p: _torch_zip(p, load=False, parse=_parser(checkpoint)))


def open_weights(path, checkpoint: bool = False) -> "WeightFile":
    """The file's tensors as a read-only mapping that reads each one from disk when it is looked up (all
    checks of `inspect_weights` done first); use it in a `with` block, which closes the file."""
    return _guarded(path, _open_safetensors, lambda p: _open_torch_zip(p, checkpoint))


class WeightFile(Mapping):
    """{name: np.ndarray} read on demand: `header` gives (dtype, shape) without data; each lookup reads that
    tensor alone into a fresh native-endian array, so a caller holding one at a time holds one at most."""

    def __init__(self, path: Path, header: dict, read, close=lambda: None):
        self.path, self.header, self._read, self._close = path, header, read, close

    def __getitem__(self, name):
        if name not in self.header:
            raise KeyError(name)
        return _guarded(self.path, lambda _: self._read(name), lambda _: self._read(name))

    def __iter__(self):
        return iter(self.header)

    def __len__(self):
        return len(self.header)

    def close(self):
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()


def _guarded(path, safetensors_reader, zip_reader):
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"{path}: weight file not found; check the model or LoRA path")
    try:
        return (safetensors_reader if path.name.endswith(".safetensors") else zip_reader)(path)
    except WeightFileError:
        raise
    except _Refused as e:
        raise WeightFileError(f"{path}: {e}") from None
    except Exception as e:  # corrupt/truncated files fail deep inside the readers
        raise WeightFileError(f"{path}: cannot read weights ({type(e).__name__}: {_short(e, 160)}); the file "
                              "is corrupt or truncated: download or save it again") from e


def _short(value, limit=60) -> str:
    """One line of at most `limit` characters describing `value` (which may be hostile: huge, odd)."""
    try:
        text = "".join(c if c.isprintable() else "?" for c in " ".join(str(value).split()))
    except Exception:  # e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---- safetensors ----

def _safetensors_header(path: Path) -> dict:
    """{name: (safetensors dtype name, shape)}: the library checks lengths and offsets against the file
    without reading tensor data; we refuse dtypes NumPy cannot hold."""
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        header = {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape())) for name in f.keys()}
    for name, (dtype, _) in header.items():
        if dtype not in _SAFETENSORS_DTYPES:
            raise _Refused(f"tensor {_short(name)} has dtype {dtype}, which NumPy cannot hold",
                           "convert the file to float16 or float32")
    return header


def _inspect_safetensors(path: Path) -> dict:
    return {name: (np.dtype(_SAFETENSORS_DTYPES[dtype]), shape)
            for name, (dtype, shape) in _safetensors_header(path).items()}


def _read_safetensors(path: Path) -> dict:
    if all(dtype != "BF16" for dtype, _ in _safetensors_header(path).values()):
        from safetensors.numpy import load_file
        return load_file(str(path))
    from safetensors import deserialize  # NumPy has no bfloat16: take the raw bytes (whole file in memory)
    state = {}
    for name, tensor in deserialize(path.read_bytes()):
        stored = np.uint16 if tensor["dtype"] == "BF16" else _SAFETENSORS_DTYPES[tensor["dtype"]]
        array = np.frombuffer(tensor["data"], np.dtype(stored).newbyteorder("<")).reshape(tensor["shape"])
        state[name] = _widen_bfloat16(array) if tensor["dtype"] == "BF16" else array.astype(stored)
    return state


def _open_safetensors(path: Path) -> WeightFile:
    """Checked by the library's header parser first; then each tensor is read at its offsets."""
    header = _inspect_safetensors(path)
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        offsets = {k: v for k, v in json.loads(f.read(size)).items() if k != "__metadata__"}
    start, handle = 8 + size, open(path, "rb")

    def read(name):
        begin, end = offsets[name]["data_offsets"]
        dtype = offsets[name]["dtype"]
        stored = np.dtype(np.uint16 if dtype == "BF16" else _SAFETENSORS_DTYPES[dtype]).newbyteorder("<")
        handle.seek(start + begin)
        array = np.frombuffer(handle.read(end - begin), stored).reshape(header[name][1])
        return _widen_bfloat16(array) if dtype == "BF16" else array.astype(stored.newbyteorder("="))

    return WeightFile(path, header, read, handle.close)


def _widen_bfloat16(bits: np.ndarray) -> np.ndarray:
    """float32 of bfloat16 values held as uint16 (bfloat16 is the high half of a float32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


# ---- torch zip ----

class _StorageKind(NamedTuple):
    """What a pickle's `torch.FloatStorage` (etc.) stands for: a name and the dtype of its bytes."""
    name: str
    dtype: np.dtype

    def __str__(self):
        return f"torch.{self.name}"


class _StorageRef(NamedTuple):
    key: str
    kind: _StorageKind
    numel: int


class _View(NamedTuple):
    """A tensor as the pickle declares it; checked against its storage by `_check_view`."""
    storage: object
    offset: object
    size: object
    stride: object


def _view(storage, offset, size, stride, *_flags):  # torch._utils._rebuild_tensor_v2, data not read yet
    return _View(storage, offset, size, stride)


def _parameter(data, *_flags):  # torch._utils._rebuild_parameter: a Parameter is its tensor
    return data


class _Foreign:
    """What a checkpoint's other objects (Lightning callbacks, NumPy scalars, ...) unpickle to: built from
    any arguments and state, and holding none of them, so nothing named by the file is imported or run."""

    def __new__(cls, *_args, **_kwargs):
        return super().__new__(cls)

    def __init__(self, *_args, **_kwargs):
        pass

    def __setstate__(self, _state):
        pass


class _Unpickler(pickle.Unpickler):
    """Rebuilds a torch state dict as {name: _View}; reads no storage. Other globals are refused, or with
    `foreign=True` (training checkpoints) become the inert `_Foreign`."""

    def __init__(self, data: bytes, foreign: bool = False):
        super().__init__(io.BytesIO(data))
        self.storages, self.foreign = {}, foreign

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _view
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageKind(name, np.dtype(_STORAGE_DTYPES[name]))
        if self.foreign:
            return _Foreign
        raise _Refused(f"the pickle names {_short(f'{module}.{name}')}, which a weights file never holds "
                       "(refused: unpickling it could run code)", "load only files from sources you trust, "
                       "or convert the file to .safetensors")

    def persistent_load(self, pid):
        # zip: (storage, kind, key, location, numel); legacy: the same and a view of it, which must be None
        if type(pid) is not tuple or len(pid) not in (5, 6) or pid[0] != "storage" or pid[5:] not in ((), (None,)):
            raise _Refused(f"unsupported persistent id {_short(pid)} in the pickle (not a torch storage)")
        _, kind, key, _location, numel = pid[:5]
        if not isinstance(kind, _StorageKind) or type(key) not in (str, int) or not _is_index(numel):
            raise _Refused(f"storage {_short(key)} has type {_short(kind)} and numel {_short(numel)}; "
                           "expected a torch storage type and a count of values")
        ref = _StorageRef(str(key), kind, numel)
        if self.storages.setdefault(ref.key, ref) != ref:
            raise _Refused(f"storage {_short(ref.key)} is declared twice with different types or sizes")
        return ref


def _prescan(data: bytes) -> None:
    """Refuse pickles whose claims the C unpickler would allocate for before reading: a byte-string length
    past the data's end (pickletools checks lengths against the data), or a memo slot far beyond the
    number of objects the data could hold (the memo table grows to the slot index)."""
    for opcode, arg, at in pickletools.genops(data):
        if opcode.name in ("PUT", "LONG_BINPUT") and not 0 <= arg < len(data):
            raise _Refused(f"the pickle stores memo slot {_short(arg)} at byte {at}, beyond its {len(data)} bytes")


def _is_index(value) -> bool:
    return type(value) is int and 0 <= value < _MAX_INDEX


def _check_view(name: str, view: _View) -> None:
    """Raise _Refused unless `view` is a tensor lying wholly inside its storage."""
    problem = _view_problem(*view)
    if problem:
        raise _Refused(f"tensor {_short(name)} {problem}")


def _view_problem(storage, offset, size, stride):
    if not isinstance(storage, _StorageRef):
        return f"has no storage (got {_short(type(storage).__name__)})"
    if not _is_index(offset):
        return f"has offset {_short(offset)}, not an integer in [0, 2^62)"
    for field, values in (("size", size), ("stride", stride)):
        if type(values) not in (tuple, list) or not all(_is_index(v) for v in values):
            return f"has {field} {_short(values)}, not a tuple of integers in [0, 2^62)"
    if len(size) != len(stride):
        return f"has {len(size)} sizes but {len(stride)} strides"
    if len(size) > _MAX_DIMS:
        return f"has {len(size)} dimensions, more than NumPy's {_MAX_DIMS}"
    numel = math.prod(size)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if numel else offset - 1
    if last >= storage.numel:
        return (f"(offset {offset}, size {_short(tuple(size))}, stride {_short(tuple(stride))}) reaches outside "
                f"its storage of {storage.numel} values")
    if numel > storage.numel:  # only a broadcast (stride 0) can; a small file must not demand terabytes
        return f"holds {numel} values, more values than its storage's {storage.numel} (a broadcast view)"
    return None


def _checked_member(archive: zipfile.ZipFile, name: str, size: int, file_size: int) -> zipfile.ZipInfo:
    """The zip member `name`, refused unless it is stored uncompressed, `size` bytes, inside the file."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise _Refused(f"{_short(name)} is not in the zip") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise _Refused(f"{_short(name)} is compressed; torch.save stores tensors uncompressed, and a compressed "
                       "member can expand far beyond the file", "re-save it with torch.save")
    if info.file_size != size:
        raise _Refused(f"{_short(name)} declares {size} bytes in the pickle but the zip holds {info.file_size}")
    if info.compress_size != info.file_size or info.header_offset + info.file_size > file_size:
        raise _Refused(f"{_short(name)} claims {info.file_size} bytes, more than the file holds")
    return info


def _checked_zip(archive: zipfile.ZipFile, path: Path, parse):
    """(prefix, {name: _View}, byte order) of an open torch zip, every storage checked against its member."""
    file_size = path.stat().st_size
    prefix, state = _read_pickle(archive, file_size, parse or _state_from_pickle)
    storages = {view.storage.key: view.storage for view in state.values()}
    for ref in storages.values():
        _checked_member(archive, f"{prefix}data/{ref.key}", ref.numel * ref.kind.dtype.itemsize, file_size)
    return prefix, state, _byte_order(archive, prefix)


def _parser(checkpoint: bool):
    """How to read the pickle of a training checkpoint (see the module docstring); None: a state dict's."""
    return _checkpoint_from_pickle if checkpoint else None


def _open_torch_zip(path: Path, checkpoint: bool) -> "WeightFile":
    """Each lookup reads its tensor's storage member (the last one is kept: tensors may share it). A legacy
    file (small by nature: nothing large was saved before torch 1.6) is read whole."""
    parse = _parser(checkpoint)
    if parse is None and not zipfile.is_zipfile(path):
        arrays = _torch_legacy(path, load=True)
        return WeightFile(path, {k: (v.dtype, v.shape) for k, v in arrays.items()}, arrays.__getitem__, lambda: None)
    _require_zip(path)
    archive = zipfile.ZipFile(path)
    try:
        prefix, state, order = _checked_zip(archive, path, parse)
    except BaseException:
        archive.close()
        raise
    last = {}

    def read(name):
        view = state[name]
        ref = view.storage
        if last.get("key") != ref.key:
            last.clear()
            array = np.frombuffer(archive.read(f"{prefix}data/{ref.key}"), ref.kind.dtype.newbyteorder(order))
            last.update(key=ref.key, array=_widen_bfloat16(array) if ref.kind.name == "BFloat16Storage" else array)
        return _materialize(last["array"], view)

    header = {name: (_native(v.storage.kind), tuple(v.size)) for name, v in state.items()}
    return WeightFile(path, header, read, archive.close)


def _require_zip(path: Path) -> None:
    if not zipfile.is_zipfile(path):
        raise _Refused("not a zip archive", "the file is damaged or of another kind: download it again")


def _torch_zip(path: Path, load: bool, parse=None) -> dict:
    """{name: array} (load) or {name: (dtype, shape)}: every check runs before any storage is read.
    `parse(pickle bytes) -> ({name: checked _View}, storages)` reads the pickle (default: a state dict's;
    only a plain state dict may be a legacy file)."""
    if parse is None and not zipfile.is_zipfile(path):
        return _torch_legacy(path, load)
    _require_zip(path)
    with zipfile.ZipFile(path) as archive:
        prefix, state, order = _checked_zip(archive, path, parse)
        if not load:
            return {name: (_native(v.storage.kind), tuple(v.size)) for name, v in state.items()}
        storages = {view.storage.key: view.storage for view in state.values()}
        arrays = {}
        for key, ref in storages.items():
            array = np.frombuffer(archive.read(f"{prefix}data/{key}"), ref.kind.dtype.newbyteorder(order))
            arrays[key] = _widen_bfloat16(array) if ref.kind.name == "BFloat16Storage" else array
    return {name: _materialize(arrays[v.storage.key], v) for name, v in state.items()}


def _read_pickle(archive: zipfile.ZipFile, file_size: int, parse):
    """(folder prefix inside the zip, {name: checked _View}) from the zip's one data.pkl."""
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pickles) != 1:
        raise _Refused(f"expected one data.pkl in the zip, found {len(pickles)}", "not a torch.save file: re-save it")
    info = archive.getinfo(pickles[0])
    if info.file_size > _MAX_PICKLE_BYTES:
        raise _Refused(f"data.pkl declares {info.file_size} bytes, more than any state dict's pickle")
    if info.compress_type == zipfile.ZIP_STORED:
        _checked_member(archive, info.filename, info.file_size, file_size)
    state, _ = parse(archive.read(info))
    return info.filename[:-len("data.pkl")], state


def _state_from_pickle(data: bytes, checkpoint: bool = False):
    """({name: checked _View}, {key: _StorageRef} of every storage declared) of a state dict's pickle, or of
    a training checkpoint's `state_dict` (its other objects skipped)."""
    _prescan(data)
    unpickler = _Unpickler(data, foreign=checkpoint)
    state = unpickler.load()
    if checkpoint:
        state = _state_dict_of(state)
    if not isinstance(state, dict) or not all(type(k) is str and isinstance(v, _View) for k, v in state.items()):
        raise _Refused("expected a flat {name: tensor} state dict", "save the state_dict only")
    for name, view in state.items():
        _check_view(name, view)
    values = sum(math.prod(view.size) for view in state.values())
    stored = sum({view.storage.key: view.storage.numel for view in state.values()}.values())
    if values > 2 * stored:  # tensors may share storages, but no real checkpoint holds each value thrice
        raise _Refused(f"its tensors hold {values} values, more than twice the {stored} its storages hold")
    return state, unpickler.storages


# ---- torch legacy (torch < 1.6) ----

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _next_pickle(head: bytes, start: int):
    """(the pickle that starts at `start` in `head`, where the next one starts)."""
    stream = io.BytesIO(head)
    stream.seek(start)
    for _ in pickletools.genops(stream):  # ends after STOP; raises if `head` ends first
        pass
    return head[start:stream.tell()], stream.tell()


def _plain_value(data: bytes):
    _prescan(data)
    return _Unpickler(data).load()


def _torch_legacy(path: Path, load: bool) -> dict:
    """The legacy layout: magic, protocol and system-info pickles, the state dict's pickle, the list of
    storage keys, then per key an int64 element count and the little-endian data."""
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(min(file_size, _MAX_PICKLE_BYTES))
        try:
            magic, at = _next_pickle(head, 0)
            magic = _plain_value(magic)
        except Exception:
            magic = None
        if type(magic) is not int or magic != _LEGACY_MAGIC:
            raise _Refused("not a PyTorch checkpoint (neither a zip nor torch's legacy format: another kind of file, "
                           "or damaged or truncated)",
                           "re-save it with torch.save or convert it to .safetensors")
        protocol, at = _next_pickle(head, at)
        if _plain_value(protocol) != _LEGACY_PROTOCOL:
            raise _Refused(f"unknown legacy protocol (expected {_LEGACY_PROTOCOL})")
        _, at = _next_pickle(head, at)  # system info: torch ignores it too (data are little-endian)
        data, at = _next_pickle(head, at)
        state, declared = _state_from_pickle(data)
        keys, at = _next_pickle(head, at)
        keys = _plain_value(keys)
        if type(keys) is not list or not all(type(k) is str for k in keys) or len(set(keys)) != len(keys):
            raise _Refused("the list of storage keys after the state dict is not a list of distinct names")
        starts = {}
        for key in keys:
            ref = declared.get(key)
            if ref is None:
                raise _Refused(f"storage {_short(key)} has data but the state dict never declares it")
            f.seek(at)
            count = f.read(8)
            if len(count) != 8 or struct.unpack("<q", count)[0] != ref.numel:
                raise _Refused(f"storage {_short(key)} declares {ref.numel} values in the pickle but its data "
                               "header disagrees")
            starts[key], at = at + 8, at + 8 + ref.numel * ref.kind.dtype.itemsize
            if at > file_size:
                raise _Refused(f"storage {_short(key)} claims more bytes than the file holds")
        used = {view.storage.key for view in state.values()}
        if used - starts.keys():
            raise _Refused(f"storage {_short(sorted(used - starts.keys())[0])} is declared but has no data")
        if not load:
            return {name: (_native(v.storage.kind), tuple(v.size)) for name, v in state.items()}
        arrays = {}
        for key in used:
            ref = declared[key]
            f.seek(starts[key])
            array = np.frombuffer(f.read(ref.numel * ref.kind.dtype.itemsize), ref.kind.dtype.newbyteorder("<"))
            arrays[key] = _widen_bfloat16(array) if ref.kind.name == "BFloat16Storage" else array
    return {name: _materialize(arrays[v.storage.key], v) for name, v in state.items()}


def _checkpoint_from_pickle(data: bytes):
    return _state_from_pickle(data, checkpoint=True)


def _state_dict_of(checkpoint) -> dict:
    """The tensors of a training checkpoint: its innermost `state_dict` (Lightning nests the model's there),
    else the object itself; entries that are not tensors (counters, stand-ins) are skipped."""
    while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise _Refused(f"the pickle holds a {type(checkpoint).__name__}, not a checkpoint with a state_dict",
                       "save the model's state_dict")
    return {k: v for k, v in checkpoint.items() if isinstance(v, _View)}


def _native(kind: _StorageKind) -> np.dtype:
    return np.dtype(np.float32) if kind.name == "BFloat16Storage" else kind.dtype.newbyteorder("=")


def _byte_order(archive: zipfile.ZipFile, prefix: str) -> str:
    """'<' or '>' from the zip's `byteorder` record (torch>=2.1 writes one; older files are little-endian)."""
    name = f"{prefix}byteorder"
    if name not in archive.namelist():
        return "<"
    info = archive.getinfo(name)
    if info.file_size > 16:
        raise _Refused(f"{_short(name)} declares {info.file_size} bytes; it should say little or big")
    text = archive.read(info).strip()
    if text not in (b"little", b"big"):
        raise _Refused(f"{_short(name)} says {_short(text)}; it should say little or big")
    return "<" if text == b"little" else ">"


def _materialize(storage: np.ndarray, view: _View) -> np.ndarray:
    """A C-contiguous native-endian copy of a checked view; NumPy re-checks that it fits its buffer."""
    item = storage.itemsize
    strided = np.ndarray(tuple(view.size), storage.dtype, buffer=storage, offset=view.offset * item,
                         strides=tuple(s * item for s in view.stride))
    return np.array(strided, dtype=storage.dtype.newbyteorder("="), order="C")


class _Storage:
    """Pickles as a persistent reference to one tensor's raw data."""

    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


def named_global(module: str, name: str):
    """A stand-in class whose pickle reference is `module.name` (what torch.load looks up), so files other
    programs read can name their classes without importing them here."""
    stub = type(name, (), {"_pickled_by_name": True})
    stub.__module__, stub.__qualname__, stub.__name__ = module, name, name
    return stub


_REBUILD = named_global("torch._utils", "_rebuild_tensor_v2")
_STORAGE_STUBS = {k: named_global("torch", k) for k in _STORAGE_NAMES.values()}


class _TensorRef:
    def __init__(self, storage: _Storage):
        self.storage = storage

    def __reduce__(self):
        shape = self.storage.array.shape
        stride = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
        return _REBUILD, (self.storage, 0, shape, stride, False, collections.OrderedDict())


class _Pickler(pickle._Pickler):  # the Python pickler: its save_global can name torch without importing it
    legacy = False  # the legacy layout's storage ids end with a view (None)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            dtype = _STORAGE_STUBS[_STORAGE_NAMES[obj.array.dtype.name]]
            return ("storage", dtype, obj.key, "cpu", obj.array.size) + ((None,) if self.legacy else ())
        return None

    def save_global(self, obj, name=None):
        if getattr(obj, "_pickled_by_name", False):
            self.write(pickle.GLOBAL + f"{obj.__module__}\n{obj.__qualname__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _pickled_tree(state: dict, legacy: bool = False, extras: dict = None):
    """(the storages, in order; the state dict's pickle referring to them). With `extras` the pickle is a
    training checkpoint's, {**extras, "state_dict": state}, arrays anywhere in `extras` stored as tensors."""
    storages = []

    def tensors(value):
        if isinstance(value, np.ndarray):
            storages.append(_Storage(str(len(storages)), np.array(value, order="C")))
            return _TensorRef(storages[-1])
        if isinstance(value, dict):
            return type(value)((k, tensors(v)) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return type(value)(tensors(v) for v in value)
        return value

    tree = tensors(collections.OrderedDict(state))
    if extras is not None:
        tree = {**tensors(dict(extras)), "state_dict": tree}
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, protocol=2)
    pickler.legacy = legacy
    pickler.dump(tree)
    return storages, buffer.getvalue()


def _little_endian_bytes(array: np.ndarray) -> bytes:
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def save_torch_zip(state: dict, path, extras: dict = None) -> None:
    """Write {name: np.ndarray} as a torch zip checkpoint that `torch.load` (weights_only too) reads; with
    `extras`, a training checkpoint (see `_pickled_tree`)."""
    path = Path(path)
    storages, data = _pickled_tree(state, extras=extras)
    root = path.name.split(".")[0] or "archive"
    members = [("data.pkl", data), ("byteorder", b"little")]  # the storages are written little-endian
    members += [(f"data/{s.key}", _little_endian_bytes(s.array)) for s in storages] + [("version", b"3\n")]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, payload in members:  # a fixed date: equal tensors give an equal file, hence one identity
            archive.writestr(zipfile.ZipInfo(f"{root}/{name}", date_time=(1980, 1, 1, 0, 0, 0)), payload)


def save_torch_legacy(state: dict, path) -> None:
    """Write {name: np.ndarray} in torch < 1.6's layout (as the LPIPS heads ship), which `torch.load`
    (weights_only too) still reads."""
    storages, data = _pickled_tree(state, legacy=True)
    sys_info = {"protocol_version": _LEGACY_PROTOCOL, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 8}}
    with open(path, "wb") as f:
        for value in (_LEGACY_MAGIC, _LEGACY_PROTOCOL, sys_info):
            pickle.dump(value, f, protocol=2)
        f.write(data)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", s.array.size) + _little_endian_bytes(s.array))


def load_state_dict(module, state: dict, source, ignore=("position_ids",)) -> None:
    """Copy `state` into `module`'s Vars by exact name; cast to each Var's dtype (fp16 files → fp32 models).
    `state` may read its tensors on lookup (`open_weights`); it then says their `shapes`, and one tensor at a
    time is held.

    Any missing key, unexpected key (other than names ending in `ignore`) or shape mismatch raises one
    line naming `source`, the first offending keys and what to do. A 0-d tensor (CLIP's `logit_scale`)
    fills a Jittor scalar, which has shape (1,).
    """
    params = module.state_dict()
    stored = getattr(state, "shapes", None) or {k: tuple(v.shape) for k, v in state.items()}  # lazy: no reads
    unexpected = [k for k in state if k not in params and not k.endswith(tuple(ignore))]
    missing = [k for k in params if k not in state]
    shapes = [f"{k} {tuple(stored[k])} vs model {tuple(params[k].shape)}"
              for k in params if k in state and (tuple(stored[k]) or (1,)) != tuple(params[k].shape)]
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
        var.update(jt.array(np.asarray(state[name]).astype(str(var.dtype), copy=False).reshape(var.shape)))
