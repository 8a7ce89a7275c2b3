"""Crafted and mutated weight files for tests/test_weights.py, read in a child process.

A reader bug can segfault (NumPy over memory it does not own) and take pytest down with it, so the
tests write files and run this script on them; each file read prints one JSON line first, so a crash
(negative exit status) still names the file that caused it.

    python tests/weight_fuzz.py check FILE...            one line per file: how read and inspect ended
    python tests/weight_fuzz.py fuzz SEED CASES DIR      seeded mutations of tiny valid files; exit 1
                                                          on any broken contract

The contract, for every file: `read_weights` and `inspect_weights` return or raise `WeightFileError`
with one line that names the file and was not caused by running out of memory; `inspect_weights`
of a file that `read_weights` reads gives its names, dtypes and shapes, and a file that
`inspect_weights` refuses is refused by `read_weights` too. The child runs under a 2 GiB address-
space limit, so an allocation driven by a claim in the file fails as a MemoryError and is caught.
"""
import collections
import io
import json
import pickle
import pickletools
import random
import resource
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common.sd import weights  # noqa: E402


# ---- crafting torch-zip files with chosen pickle contents ----

class Storage:
    """Pickles as the persistent id ('storage', torch.<kind>, key, 'cpu', numel) (each field any value)."""

    def __init__(self, key="0", numel=16, kind="FloatStorage", tag="storage", extra=("cpu",)):
        self.pid = (tag, weights.named_global("torch", kind) if isinstance(kind, str) else kind, key,
                    *extra, numel)


class Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""

    def __init__(self, storage, offset, size, stride, *rest):
        self.args = (storage, offset, size, stride) + (rest or (False, collections.OrderedDict()))

    def __reduce__(self):
        return weights._REBUILD, self.args


class _CraftPickler(pickle._Pickler):  # the Python pickler: names torch globals without importing torch
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, Storage) else None

    def save_global(self, obj, name=None):
        if str(getattr(obj, "__module__", "")).startswith("torch"):
            self.write(pickle.GLOBAL + f"{obj.__module__}\n{obj.__qualname__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def craft_pickle(tree) -> bytes:
    buffer = io.BytesIO()
    _CraftPickler(buffer, protocol=2).dump(tree)
    return buffer.getvalue()


def craft_bin(path, tensors, members, root="archive", compress=zipfile.ZIP_STORED, pickle_bytes=None):
    """A torch zip at `path`: data.pkl pickles {name: Tensor} and data/<key> holds members[key] (bytes)."""
    with zipfile.ZipFile(path, "w", compress) as archive:
        archive.writestr(f"{root}/data.pkl", pickle_bytes or craft_pickle(collections.OrderedDict(tensors)))
        for key, raw in members.items():
            archive.writestr(f"{root}/data/{key}", raw)
        archive.writestr(f"{root}/version", "3\n")
    return Path(path)


class LegacyStorage(Storage):
    """A Storage whose id ends with the legacy layout's view field (None unless given)."""

    def __init__(self, *args, view=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.pid += (view,)


def craft_legacy(path, tensors, storages, keys=None, magic=weights._LEGACY_MAGIC):
    """A torch < 1.6 file at `path`: magic, protocol and system-info pickles, the pickle of {name: Tensor},
    the storage key list (default: the keys of `storages`), then for each {key: (count, bytes)} an int64
    count and the bytes."""
    parts = [pickle.dumps(value, protocol=2) for value in (magic, 1001, {"little_endian": True})]
    parts.append(craft_pickle(collections.OrderedDict(tensors)))
    parts.append(pickle.dumps(list(storages) if keys is None else keys, protocol=2))
    parts += [struct.pack("<q", count) + raw for count, raw in storages.values()]
    Path(path).write_bytes(b"".join(parts))
    return Path(path)


def floats(n) -> bytes:
    return np.arange(n, dtype="<f4").tobytes()


def set_declared_size(raw: bytes, member_suffix: str, size: int) -> bytes:
    """The zip `raw` with the uncompressed size its central directory declares for members whose name ends
    with `member_suffix` set to `size` (data and CRC unchanged)."""
    raw = bytearray(raw)
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46:at + 46 + name_len].decode("utf-8", "replace").endswith(member_suffix):
            struct.pack_into("<I", raw, at + 24, size)
        at = raw.find(b"PK\x01\x02", at + 4)
    return bytes(raw)


# ---- reading a file and checking the contract ----

def _attempt(fn, path):
    """('ok', {name: [dtype, shape]}) | ('error', message) | ('crash', 'Type: message')."""
    try:
        out = fn(path)
    except weights.WeightFileError as e:
        return "error", str(e)
    except BaseException as e:  # noqa: B902 - anything else breaks the contract
        return "crash", f"{type(e).__name__}: {e}"[:300]
    if fn is weights.read_weights:
        if not all(isinstance(v, np.ndarray) for v in out.values()):
            return "crash", "read_weights returned a non-array"
        out = {k: (v.dtype, v.shape) for k, v in out.items()}
    return "ok", {k: [str(np.dtype(d)), list(s)] for k, (d, s) in out.items()}


def contract_violation(path, read, inspect):
    """What breaks the contract in one file's (read, inspect) outcomes, or None."""
    for what, (status, value) in (("read_weights", read), ("inspect_weights", inspect)):
        if status == "crash":
            return f"{what} raised {value}"
        if status == "error" and (not value.isprintable() or Path(path).name not in value
                                  or "MemoryError" in value or len(value) > 400):
            return f"{what}: not a short one-line error naming the file without running out of memory: {value!r}"
    if read[0] == "ok" and inspect != read:
        return f"inspect_weights {inspect} disagrees with read_weights {read}"
    if inspect[0] == "error" and read[0] == "ok":
        return f"inspect_weights refused a file read_weights reads: {inspect[1]}"
    return None


def check(path):
    print(json.dumps({"file": str(path)}), flush=True)  # before reading: a crash leaves this line last
    read, inspect = _attempt(weights.read_weights, path), _attempt(weights.inspect_weights, path)
    return {"file": str(path), "read": read, "inspect": inspect,
            "violation": contract_violation(path, read, inspect)}


# ---- seeded mutations ----

INTERESTING = [0, 1, 2, 3, 15, 16, 17, 64, -1, -2, 2**20, 2**30, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1,
               2**63, 2**64, 10**30]
ODD_VALUES = [2.5, "1", None, True, b"x", [], (1,), {}, float("nan")]
SAFETENSORS_DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "C64", "X", 7, None]


def _int(rng):
    return rng.choice(INTERESTING) if rng.random() < 0.9 else rng.choice(ODD_VALUES)


def _flip_bits(rng, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def _mutate_bytes(rng, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(data))
        op = rng.randrange(4)
        if op == 0:
            data[i] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 1:
            del data[i:i + rng.randint(1, 8)]
        elif op == 2:
            data[i:i] = data[rng.randrange(len(data)):][:rng.randint(1, 16)]
        else:
            data[i] ^= 1 << rng.randrange(8)
        if not data:
            break
    return bytes(data)


def _mutate_opcode(rng, pkl: bytes) -> bytes:
    """Replace one opcode of the pickle by another (arguments left as they were)."""
    positions = [pos for _op, _arg, pos in pickletools.genops(pkl)]
    codes = [op.code.encode("latin-1") for op in pickletools.opcodes]
    i = rng.choice(positions)
    return pkl[:i] + rng.choice(codes) + pkl[i + 1:]


def _zip_members(raw: bytes):
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        return [(n, archive.read(n)) for n in archive.namelist()]


def _rezip(members) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def _crafted_zip(rng) -> bytes:
    """A zip of one valid (4, 4) view of a 16-float storage with one or two of its fields made hostile."""
    fields = {"key": "0", "numel": 16, "kind": "FloatStorage", "offset": 0, "size": [4, 4], "stride": [4, 1]}
    for _ in range(rng.randint(1, 2)):
        field = rng.choice(list(fields))
        if field == "kind":
            fields[field] = rng.choice(["HalfStorage", "BFloat16Storage", "LongStorage", "EvilStorage", "Storage"])
        elif field == "key":
            fields[field] = rng.choice([0, "1", "../0", 2.5, None])
        elif field in ("size", "stride") and isinstance(fields[field], list) and rng.random() < 0.7:
            values = fields[field]
            if rng.random() < 0.8:  # one element, or the rank
                values[rng.randrange(len(values))] = _int(rng)
            else:
                values.extend([1] * rng.choice([1, 40]))
        else:
            fields[field] = _int(rng)
    storage = Storage(key=fields["key"], numel=fields["numel"], kind=fields["kind"])
    size, stride = (tuple(v) if isinstance(v, list) else v for v in (fields["size"], fields["stride"]))
    tensors = {"t": Tensor(storage, fields["offset"], size, stride)}
    if rng.random() < 0.3:  # a second view of the same storage, maybe declared differently
        twin = Storage(key="0", numel=rng.choice([16, 32]), kind=rng.choice(["FloatStorage", "HalfStorage"]))
        tensors["u"] = Tensor(twin, 0, (4,), (1,))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", craft_pickle(collections.OrderedDict(tensors)))
        archive.writestr("archive/data/0", floats(16))
    return buffer.getvalue()


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _split_safetensors(raw: bytes):
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _mutate_header(rng, raw: bytes) -> bytes:
    header, data = _split_safetensors(raw)
    name = rng.choice([k for k in header if k != "__metadata__"])
    field = rng.choice(["dtype", "shape", "data_offsets", "entry", "extra"])
    if field == "dtype":
        header[name]["dtype"] = rng.choice(SAFETENSORS_DTYPES)
    elif field == "shape":
        header[name]["shape"] = [_int(rng) for _ in range(rng.choice([0, 1, 2, 3]))]
    elif field == "data_offsets":
        header[name]["data_offsets"] = [_int(rng), _int(rng)] if rng.random() < 0.8 else [_int(rng)]
    elif field == "entry":
        header[name] = rng.choice([None, 3, "x", [], {}])
    else:
        header[rng.choice(["__metadata__", "z"])] = rng.choice([{"a": 1}, {"a": "b"}, [], None])
    try:
        return _safetensors_bytes(header, data[:rng.choice([len(data), 0, 4])])
    except (TypeError, ValueError):  # a value JSON cannot hold (e.g. bytes): keep the file as it was
        return raw


def _bin_case(rng, seeds):
    raw = rng.choice(seeds)
    kind = rng.choice(["truncate", "flip", "pickle", "opcode", "member", "declared"] + ["crafted"] * 4)
    if kind == "truncate":
        return kind, raw[:rng.randrange(len(raw))]
    if kind == "flip":
        return kind, _flip_bits(rng, raw)
    members = _zip_members(raw)
    if kind in ("pickle", "opcode"):
        mutate = _mutate_bytes if kind == "pickle" else _mutate_opcode
        return kind, _rezip([(n, mutate(rng, d) if n.endswith("data.pkl") else d) for n, d in members])
    if kind == "member":
        data = [i for i, (n, _) in enumerate(members) if "/data/" in n]
        i = rng.choice(data)
        n, d = members[i]
        members[i] = (n, d[:rng.randrange(len(d) + 1)] if rng.random() < 0.5 else d + d[:rng.randint(1, 8)])
        return kind, _rezip(members)
    if kind == "declared":
        suffix = rng.choice(["data.pkl", "/0", "/1"])
        return kind, set_declared_size(raw, suffix, rng.choice([0, 1, 2**31, 2**32 - 1]))
    return kind, _crafted_zip(rng)


def _legacy_case(rng, seeds):
    """A torch < 1.6 file truncated, bit-flipped, or with bytes of its pickles or counts mutated."""
    raw = rng.choice(seeds)
    kind = rng.choice(["truncate", "flip", "bytes"])
    if kind == "truncate":
        return kind, raw[:rng.randrange(len(raw))]
    if kind == "flip":
        return kind, _flip_bits(rng, raw)
    return kind, _mutate_bytes(rng, raw)


def _safetensors_case(rng, seeds):
    raw = rng.choice(seeds)
    kind = rng.choice(["truncate", "flip", "length", "header", "header", "json"])
    if kind == "truncate":
        return kind, raw[:rng.randrange(len(raw))]
    if kind == "flip":
        return kind, _flip_bits(rng, raw)
    if kind == "length":
        n = struct.unpack("<Q", raw[:8])[0]
        value = rng.choice([0, 1, 2, n - 1, n + 1, len(raw), 2**31, 2**32, 2**40, 2**63, 2**64 - 1])
        return kind, struct.pack("<Q", value) + raw[8:]
    if kind == "header":
        return kind, _mutate_header(rng, raw)
    n = struct.unpack("<Q", raw[:8])[0]
    return kind, raw[:8] + _mutate_bytes(rng, raw[8:8 + n]) + raw[8 + n:]


def seed_files(folder: Path):
    """Small valid files to mutate: ours and torch.save's .bin, and two .safetensors (one with bfloat16)."""
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    state = {"a.weight": rng.standard_normal((3, 5)).astype(np.float32), "b": np.float16([1.5, -2]),
             "c": np.array(7, dtype=np.int64)}
    weights.save_torch_zip(state, folder / "ours.bin")
    weights.save_torch_legacy(state, folder / "legacy.pth")
    (folder / "torch.bin").write_bytes(np.load(REPO / "tests" / "golden" / "lora.npz")["torch_odd_bin"].tobytes())
    save_file(state, str(folder / "seed.safetensors"))
    bf16 = {"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
            "n": {"dtype": "I32", "shape": [1], "data_offsets": [8, 12]}}
    return ([(folder / n).read_bytes() for n in ("ours.bin", "torch.bin")],
            [(folder / "seed.safetensors").read_bytes(), _safetensors_bytes(bf16, bytes(range(12)))],
            [(folder / "legacy.pth").read_bytes()])


def fuzz(seed: int, cases: int, folder: Path) -> int:
    bins, safetensors, legacy = seed_files(folder)
    rng = random.Random(seed)
    broken = 0
    for i in range(cases):
        fmt = ("safetensors", "bin", "bin", "safetensors", "bin", "pth")[i % 6]  # .pth: torch < 1.6 layout
        case = {"bin": _bin_case, "safetensors": _safetensors_case, "pth": _legacy_case}[fmt]
        kind, data = case(rng, {"bin": bins, "safetensors": safetensors, "pth": legacy}[fmt])
        path = folder / f"case{i:04d}_{kind}.{fmt}"
        path.write_bytes(data)
        result = check(path)
        if result["violation"]:
            broken += 1
            print(json.dumps({"case": i, "file": path.name, "violation": result["violation"]}), flush=True)
        path.unlink()
    print(json.dumps({"cases": cases, "broken": broken}), flush=True)
    return 1 if broken else 0


def main(argv):
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    if argv[0] == "check":
        for name in argv[1:]:
            print(json.dumps(check(Path(name))), flush=True)
        return 0
    if argv[0] == "fuzz":
        return fuzz(int(argv[1]), int(argv[2]), Path(argv[3]))
    raise SystemExit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
