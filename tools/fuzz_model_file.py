"""Fuzz the model-file reader: mutate valid model files, load them, count.

Starts from valid model files (plain parameters and a Segmenter's, deflated
and stored), mutates them, and loads each mutant with
:func:`arrseg.model_file.load` and, when that returns, with
:meth:`arrseg.Segmenter.load` and a prediction. The property: every load
returns or raises :class:`arrseg.model_file.ModelFileError`, never another
exception, within a time bound and a memory bound (the tracemalloc peak,
which counts NumPy's array allocations).

The mutations (one to three per file):

- bit flips, truncation, byte splices (overwrite, insert, delete, repeat);
- a zip member replaced by a crafted ``.npy`` (huge, negative or boolean
  dimensions, object, structured, zero-size and other dtypes,
  ``fortran_order``, unterminated or non-dict headers, header lengths that
  lie, format versions 0 to 4), stored or deflated, with true or lying zip
  sizes and CRCs;
- deflate bombs (up to 512 MiB inflated) in an array or the metadata, with
  honest or lying declared sizes;
- JSON edits of the metadata: keys deleted, values replaced or retyped,
  deep nesting, huge integers and floats, NaN and infinities.

Usage::

    python tools/fuzz_model_file.py --executions 20000 --seed 0
    python tools/fuzz_model_file.py --seconds 300 --seed 1

It prints the executions, the count of each outcome (loaded,
ModelFileError, other), the slowest call and the peak memory, and exits 1
if any other exception occurred (each is printed with the seed of its
mutant, which ``--replay SEED`` runs again) or a bound was exceeded.
The hypothesis tests of ``tests/test_model_file_fuzz.py`` reuse these
builders and mutations.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import pathlib
import random
import struct
import sys
import tempfile
import time
import tracemalloc
import traceback
import warnings
import zipfile
import zlib
from functools import lru_cache

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import arrseg  # noqa: E402
from arrseg import model_file  # noqa: E402
from arrseg.model_file import ModelFileError  # noqa: E402

#: Bounds of one call (load, and Segmenter.load + predict when it loads).
TIME_LIMIT_S = 2.0
MEMORY_LIMIT_BYTES = 64 * 2**20


# -- valid model files ------------------------------------------------------------

def _fitted_segmenter(depth=0):
    """A Segmenter in the state fit leaves it (set directly: no training);
    with ``depth`` residual layers of doubling dilations."""
    est = arrseg.Segmenter(width=4, kernel_size=3, class_weight="balanced",
                           early_stopping=True, depth=depth, dilation="doubling",
                           layer_kernel_size=3)
    est.params_ = arrseg.init_params(2, 4, 3, 3, seed=0, dtype="float32", depth=depth)
    est.in_channels_, est.n_classes_ = 2, 3
    est.classes_ = np.arange(3)
    est.mean_, est.std_ = np.array([0.5, 0.25]), np.array([0.2, 0.1])
    est.class_weight_ = np.array([0.5, 1.0, 2.0])
    est.n_iter_ = 3
    est.loss_curve_ = [1.0, 0.5, float("nan")]
    est.validation_scores_ = [0.25, 0.5, 0.75]
    est.validation_loss_curve_ = [1.5, 1.0, float("inf")]
    est.validation_score_ = 0.75
    return est


@lru_cache(maxsize=None)
def seed_files():
    """Valid model files, ``{name: bytes}``: plain parameters (float32 and
    float64, with and without ``c``) and a Segmenter's, deflated and stored,
    and a deflated Segmenter with two residual layers."""
    files = {}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.npz")
        for compress in (True, False):
            z = "deflated" if compress else "stored"
            p = arrseg.init_params(3, 5, 2, 3, seed=1, dtype="float64")
            model_file.save(path, p, {"classes": ["a", "b"], "lr": 0.1},
                            compress=compress)
            files[f"params-float64-{z}"] = pathlib.Path(path).read_bytes()
            p = arrseg.init_params(1, 2, 2, 1, seed=2, dtype="float32", bias=False)
            model_file.save(path, p, compress=compress)
            files[f"params-float32-no-c-{z}"] = pathlib.Path(path).read_bytes()
            _fitted_segmenter().save(path)
            params, meta = model_file.load(path)
            meta = {k: v for k, v in meta.items() if k not in model_file.RESERVED_KEYS}
            model_file.save(path, params, meta, compress=compress)
            files[f"segmenter-{z}"] = pathlib.Path(path).read_bytes()
        _fitted_segmenter(depth=2).save(path)
        files["segmenter-deep-deflated"] = pathlib.Path(path).read_bytes()
    return files


# -- building zips and .npy members -------------------------------------------------

def read_members(data):
    """The members of a zip as ``member()`` dicts, their data as stored
    (nothing is inflated: a member may be a bomb)."""
    out = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for i in z.infolist():
            local = struct.unpack("<4s2B4HL2L2H", data[i.header_offset:
                                                      i.header_offset + 30])
            start = i.header_offset + 30 + local[10] + local[11]
            out.append({"name": i.filename, "method": i.compress_type,
                        "payload": data[start:start + i.compress_size],
                        "crc": i.CRC, "size": i.file_size,
                        "csize": i.compress_size, "flags": i.flag_bits})
    return out


def inflate(m, limit=2**24):
    """The data of a member dict, at most ``limit`` bytes of it."""
    if m["method"] == 0:
        return m["payload"][:limit]
    return zlib.decompressobj(-15).decompress(m["payload"], limit)


def deflate(raw):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(raw) + c.flush()


def member(name, raw, compress=True, **lies):
    """A zip member: ``name``, stored data, method, CRC-32, declared sizes.
    ``lies`` override ``crc``, ``size`` (uncompressed) or ``csize``."""
    payload = deflate(raw) if compress else raw
    m = {"name": name, "payload": payload, "method": 8 if compress else 0,
         "crc": zlib.crc32(raw), "size": len(raw), "csize": len(payload),
         "flags": 0}
    m.update(lies)
    return m


def build_zip(members):
    """A zip file of ``member()`` dicts, sizes written as declared (zip64
    extra fields where they exceed 32 bits)."""
    out = bytearray()
    central = bytearray()
    for m in members:
        name = m["name"].encode("utf-8")
        offset = len(out)
        size, csize = m["size"], m["csize"]
        extra = b""
        if size >= 0xFFFFFFFF or csize >= 0xFFFFFFFF:
            extra = struct.pack("<HHQQ", 1, 16, size, csize)
            size32 = csize32 = 0xFFFFFFFF
        else:
            size32, csize32 = size, csize
        out += struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 45, 0, m["flags"],
                           m["method"], 0, 0x21, m["crc"] & 0xFFFFFFFF, csize32,
                           size32, len(name), len(extra))
        out += name + extra + m["payload"]
        central += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 45, 3, 45, 0,
                               m["flags"], m["method"], 0, 0x21,
                               m["crc"] & 0xFFFFFFFF, csize32, size32, len(name),
                               len(extra), 0, 0, 0, 0o644 << 16, offset)
        central += name + extra
    start = len(out)
    out += central
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members),
                       len(central), start, 0)
    return bytes(out)


def npy_header_text(shape=(3,), descr="<f8", fortran_order=False):
    return (f"{{'descr': {descr!r}, 'fortran_order': {fortran_order!r}, "
            f"'shape': {shape!r}, }}")


def npy_bytes(header_text, data=b"", version=(1, 0), length=None):
    """A .npy file of a header text (padded to 64 bytes as NumPy does) and
    data; ``length`` overrides the header length field (a lie)."""
    text = header_text.encode("latin1" if version < (3, 0) else "utf-8")
    len_size = 2 if version == (1, 0) else 4
    pad = -(6 + 2 + len_size + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    n = len(text) if length is None else length
    field = (struct.pack("<H", n & 0xFFFF) if len_size == 2
             else struct.pack("<I", n & 0xFFFFFFFF))
    return b"\x93NUMPY" + bytes(version) + field + text + data


def npy_of(array):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@lru_cache(maxsize=16)
def _bomb(header, n_mib):
    """(deflate stream, CRC-32) of ``header`` + ``n_mib`` MiB of zeros, built
    without deflating them: after a full flush, the deflate blocks of 1 MiB
    of zeros reference nothing before them, so one copy is repeated."""
    mib = b"\0" * 2**20
    head = zlib.compressobj(0, zlib.DEFLATED, -15)       # the header, stored
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    stream = (head.compress(header) + head.flush(zlib.Z_FULL_FLUSH) + block * n_mib
              + c.flush(zlib.Z_FINISH))
    crc = zlib.crc32(header)
    for _ in range(n_mib):
        crc = zlib.crc32(mib, crc)
    return stream, crc


def bomb_member(name, n_bytes, honest=True, what="array"):
    """A deflate bomb: a member whose few hundred kB inflate to a .npy of
    ``n_bytes`` (a multiple of 1 MiB) of zeros, its header describing them;
    the zip directory declares the true size if ``honest``, else a small one."""
    if what == "metadata":
        header = npy_bytes(npy_header_text((n_bytes,), "|u1"))
    else:
        header = npy_bytes(npy_header_text((n_bytes // 8,), "<f8"))
    stream, crc = _bomb(header, n_bytes // 2**20)
    size = len(header) + n_bytes if honest else len(header) + 64
    return {"name": name, "payload": stream, "method": 8, "crc": crc, "size": size,
            "csize": len(stream), "flags": 0}


def replace_members(data, replacements, drop=()):
    """The zip ``data`` with members replaced (``{name: member dict}``, new
    names appended) and others dropped; the rest re-packed as they were."""
    out, seen = [], set()
    for m in read_members(data):
        seen.add(m["name"])
        if m["name"] not in drop:
            out.append(replacements.get(m["name"], m))
    out += [m for n, m in replacements.items() if n not in seen]
    return build_zip(out)


# -- JSON edits of the metadata -------------------------------------------------------

RAW_JSON = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 400,
            "1" + "0" * 5000, "[" * 100_000 + "]" * 100_000, "[" * 100_000,
            '{"a": ' * 5000 + "0" + "}" * 5000, "-0.0", "1e-400", "true",
            '"\\ud800"', "12345678901234567890"]


def json_values(rng, depth=0):
    """A random JSON value (or a raw JSON text in RAW_JSON)."""
    kind = rng.randrange(12)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 2, 3, 4, 5, 7, 16, 2**31, 2**63, -2**63])
    if kind == 3:
        return rng.choice([0.0, 0.5, -1.5, 1e308, 5e-324, 3.0, 1.0])
    if kind == 4:
        return rng.choice(["", "tanh", "adam", "balanced", "auto", "zeros", "x" * 300])
    if kind == 5 and depth < 3:
        return [json_values(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 6 and depth < 3:
        return {rng.choice(["width", "a", "mean", ""]): json_values(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    if kind == 7:
        return RawJSON(rng.choice(RAW_JSON))
    if kind == 8:
        return [rng.choice([0.1, 1.0, -1.0, 0.0]) for _ in range(rng.randrange(5))]
    return rng.choice([4, 3, 2, 1.0, "4", [4], None])


class RawJSON(str):
    """A JSON text to splice in verbatim (where json.dumps would refuse it)."""


def dump_json(meta):
    """json.dumps, with RawJSON values spliced in as written."""
    raws = []

    def placeholder(obj):
        if isinstance(obj, RawJSON):
            raws.append(str(obj))
            return f"\x00RAW{len(raws) - 1}\x00"
        if isinstance(obj, dict):
            return {k: placeholder(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [placeholder(v) for v in obj]
        return obj

    text = json.dumps(placeholder(meta))
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00RAW{i}\x00"), raw)
    return text


def metadata_of(data):
    """The metadata of a model file (ValueError if an earlier mutation broke
    it)."""
    for m in read_members(data):
        if m["name"] == "metadata.npy":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")      # a Python 2 header
                a = np.load(io.BytesIO(inflate(m)), allow_pickle=False)
            return json.loads(a.tobytes().decode("utf-8"))
    raise ValueError("no metadata")


def paths_of(meta, prefix=()):
    """Every key path of the metadata's objects and lists."""
    out = []
    items = (meta.items() if isinstance(meta, dict)
             else enumerate(meta) if isinstance(meta, list) else ())
    for k, v in items:
        out.append(prefix + (k,))
        out += paths_of(v, prefix + (k,))
    return out


def edit_json(meta, path, op, value=None):
    """The metadata with one edit at ``path``: "delete", "replace" or
    "retype" (a number becomes a string, a list an object, ...)."""
    meta = copy.deepcopy(meta)
    parent = meta
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    if op == "delete":
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    elif op == "replace":
        parent[key] = value
    else:
        old = parent[key]
        parent[key] = (str(old) if isinstance(old, (int, float)) and not isinstance(
            old, bool) else {"0": old} if isinstance(old, list) else
            [old] if isinstance(old, (str, dict)) else int(bool(old)) if isinstance(
                old, bool) else "null")
    return meta


def with_metadata_text(data, text, compress=None):
    """The zip ``data`` with its metadata replaced by the JSON ``text``."""
    raw = npy_of(np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8))
    deflated = {m["name"]: m["method"] == 8
                for m in read_members(data)}.get("metadata.npy", True)
    return replace_members(data, {"metadata.npy": member(
        "metadata.npy", raw, deflated if compress is None else compress)})


# -- random mutations (the standalone fuzzer's, and hypothesis's via randoms()) ------

SHAPES = [(), (0,), (3,), (5,), (-1,), (2**62,), (10**30,), (2**31, 2**31),
          (True,), (5, 3, 3, 3), (5, 2), (2,), (4, 2, 3, 3), (1, 2, 2, 2),
          (3, 3, -3, 3), (0, 0, 0, 0), (2**20,)]
DESCRS = ["<f8", "<f4", ">f8", ">f4", "|u1", "|O", "<i8", "<f2", "|V0", "|S0", "<U3",
          "|b1", "<c16", "<f16", [("a", "<f8")], [("a", "|O")], ("<f8", (2,)),
          "<M8[s]", "nonsense", 3]
BROKEN_HEADERS = ["{'descr': '<f8', 'fortran_order': False, 'shape': (3,", "{", "",
                  "[1, 2, 3]", "{'descr': '<f8'}", "{'descr': '<f8', 'fortran_order'"
                  ": False, 'shape': (3,), 'extra': 1}", "(" * 500 + ")" * 500,
                  "{'descr': '<f8', 'fortran_order': False, 'shape': (3L,), }",
                  "\x00\xff" * 10, "{'descr': '<f8', 'fortran_order': 0, 'shape': (3,)}",
                  "{'descr': '<f8', 'fortran_order': False, 'shape': [3]}",
                  "{'descr': '<f8', 'fortran_order': False, 'shape': (1e3,)}",
                  "{'descr':'<f8','fortran_order':False,'shape':(" + "9" * 5000 + ",)}"]
VERSIONS = [(1, 0), (2, 0), (3, 0), (1, 0), (2, 0), (4, 0), (0, 0), (1, 1)]
MEMBERS = ["K.npy", "b.npy", "W.npy", "c.npy", "metadata.npy"]


def random_npy(rng):
    """A crafted .npy member: mostly well-formed headers of odd shapes and
    dtypes, sometimes broken ones, with data of the right or a wrong size."""
    version = rng.choice(VERSIONS)
    if rng.random() < 0.25:
        text = rng.choice(BROKEN_HEADERS)
    else:
        text = npy_header_text(rng.choice(SHAPES), rng.choice(DESCRS),
                               rng.random() < 0.3)
    try:
        dtype = np.dtype(rng.choice(["<f8", "<f4", "|u1"]))
        n = math.prod(s for s in rng.choice(SHAPES) if isinstance(s, int))
        nbytes = max(0, n) * dtype.itemsize
    except (TypeError, ValueError, OverflowError):
        nbytes = 8
    if nbytes > 2**16 or rng.random() < 0.3:
        nbytes = rng.randrange(0, 200)
    length = None
    if rng.random() < 0.1:
        length = rng.choice([0, 1, 65535, 2**31, 2**32 - 1, 10_001])
    try:
        return npy_bytes(text, rng.randbytes(nbytes), version, length)
    except UnicodeEncodeError:
        return npy_bytes("{", b"", version, length)


def mutate_bytes(rng, data):
    """One byte-level mutation: bit flips, truncation or a splice."""
    data = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0 and data:
        for _ in range(rng.randrange(1, 9)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del data[rng.randrange(len(data) + 1):]
    elif kind == 2 and data:
        i = rng.randrange(len(data))
        n = rng.randrange(1, 17)
        data[i:i + n] = rng.randbytes(n)
    elif kind == 3:
        i = rng.randrange(len(data) + 1)
        data[i:i] = rng.choice([rng.randbytes(rng.randrange(1, 64)), b"\xff" * 8,
                                b"\x00" * 8, b"PK\x03\x04", b"PK\x05\x06"])
    else:
        i = rng.randrange(len(data) + 1)
        j = rng.randrange(i, min(len(data), i + 256) + 1)
        data[i:j] = data[i:j] * rng.randrange(0, 4)
    return bytes(data)


def mutate_member(rng, data):
    """A zip member replaced by a crafted .npy, or a deflate bomb; sizes and
    CRCs true or lying; or members dropped, duplicated, renamed."""
    members = read_members(data)
    names = [m["name"] for m in members]
    kind = rng.randrange(6)
    if kind == 0:
        lies = {}
        if rng.random() < 0.3:
            lies[rng.choice(["crc", "size", "csize"])] = rng.choice(
                [0, 1, 2**31, 2**32 - 2, 2**40, 123])
        if rng.random() < 0.1:
            lies["flags"] = rng.choice([1, 8, 0x20, 0x40, 0x800])
        if rng.random() < 0.1:
            lies["method"] = rng.choice([12, 14, 99, 9])
        m = member(rng.choice(MEMBERS), random_npy(rng), rng.random() < 0.5, **lies)
        return replace_members(data, {m["name"]: m})
    if kind == 1:
        n_bytes = rng.choice([2**20, 2**24, 2**26, 2**28, 2**29])
        name = rng.choice(MEMBERS)
        what = "metadata" if name == "metadata.npy" else "array"
        m = bomb_member(name, n_bytes, honest=rng.random() < 0.5, what=what)
        return replace_members(data, {name: m})
    if kind == 2:
        return replace_members(data, {}, drop={rng.choice(names)})
    if kind == 3:
        members.append(dict(rng.choice(members)))
        return build_zip(members)
    if kind == 4:
        rng.choice(members)["name"] = rng.choice(["K", "x.npy", "K.npy.npy",
                                                  "../K.npy", "métadata.npy", ""])
        if rng.random() < 0.3:
            members += [member(f"e{i}.npy", b"") for i in range(70)]
        return build_zip(members)
    # an array of the right name with a valid header but another dtype/shape
    dtype = rng.choice(["<f8", ">f4", "<i8", "|u1", "<f2", "<U2"])
    shape = rng.choice([(5,), (3,), (5, 3, 3, 3), (4, 2, 3, 3), (4, 3), (2, 2), ()])
    arr = np.zeros(shape, dtype=dtype)
    if arr.dtype.kind == "f" and rng.random() < 0.3:
        arr[...] = rng.choice([np.nan, np.inf])
    name = rng.choice(MEMBERS)
    return replace_members(data, {name: member(name, npy_of(arr), rng.random() < 0.5)})


def mutate_metadata(rng, data):
    """One to three random JSON edits of the metadata."""
    try:
        meta = metadata_of(data)
    except Exception:  # noqa: BLE001 (an earlier mutation broke it)
        return data
    for _ in range(rng.randrange(1, 4)):
        paths = paths_of(meta)
        if not paths:
            break
        path = rng.choice(paths)
        op = rng.choice(["delete", "replace", "replace", "retype"])
        meta = edit_json(meta, path, op, json_values(rng))
    return with_metadata_text(data, dump_json(meta), rng.random() < 0.5)


def mutate(rng, data):
    """One to three mutations of a valid model file."""
    for _ in range(rng.randrange(1, 4)):
        kind = rng.random()
        try:
            if kind < 0.35:
                data = mutate_bytes(rng, data)
            elif kind < 0.6:
                data = mutate_member(rng, data)
            else:
                data = mutate_metadata(rng, data)
        except Exception:  # noqa: BLE001
            # the zip is already broken: a byte mutation instead
            data = mutate_bytes(rng, data)
    return data


def mutant(case):
    """(seed file's name, mutant) of the per-execution seed ``case``: what
    ``--replay case`` loads."""
    seeds = seed_files()
    rng = random.Random(case)
    base = rng.choice(sorted(seeds))
    return base, mutate(rng, seeds[base])


# -- the property -----------------------------------------------------------------------

def load_everything(path):
    """Load ``path`` as model_file.load does and, when that returns, as
    Segmenter.load does, and predict with the Segmenter: "loaded",
    "params only" (a model file that is not a Segmenter's), or
    ModelFileError raised. Any other exception propagates."""
    model_file.load(path)
    try:
        est = arrseg.Segmenter.load(path)
    except ModelFileError:
        return "params only"
    x = np.linspace(0, 1, est.in_channels_ * 25).reshape(est.in_channels_, 5, 5)
    with np.errstate(all="ignore"):
        normalised = (x - est.mean_[:, None, None]) / est.std_[:, None, None]
        try:
            P = est.predict_proba(x)
        except ValueError as e:
            # an explicit method that cannot run on NumPy: the user's choice
            if est.method == "fused" and "fused" in str(e):
                return "loaded"
            # finite but extreme mean_ / std_ (1e308, 1e-300) overflow the
            # normalised image: predict refuses it, naming the normalisation
            # (a clear error, not a silently wrong prediction)
            if ("the images are finite but (images - mean_) / std_ is not"
                    in str(e) and not np.isfinite(normalised).all()):
                return "loaded"
            raise
    if P.shape != (est.n_classes_, 5, 5) or not np.allclose(P.sum(axis=0), 1):
        raise AssertionError(f"predict_proba of a loaded model gave shape {P.shape} "
                             f"sums {P.sum(axis=0)}")
    return "loaded"


def run_one(path, data):
    """(outcome, seconds, peak bytes) of loading ``data`` written at ``path``;
    outcome is "loaded", "params only", "ModelFileError" or the exception."""
    pathlib.Path(path).write_bytes(data)
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    try:
        outcome = load_everything(path)
    except ModelFileError:
        outcome = "ModelFileError"
    except Exception as e:  # noqa: BLE001 (what the fuzzer looks for)
        outcome = e
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] - base
    if not was_tracing:
        tracemalloc.stop()
    return outcome, seconds, peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=None,
                        help="stop after this long (default: no time limit)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replay", type=int, default=None,
                        help="run the one mutant of this per-execution seed")
    parser.add_argument("--save-failures", default=None,
                        help="folder to write the files that raised other errors")
    args = parser.parse_args(argv)

    master = random.Random(args.seed)
    counts = {"loaded": 0, "params only": 0, "ModelFileError": 0, "other": 0}
    slowest = (0.0, None)
    peak = (0, None)
    failures = []
    over_bounds = []
    start = time.perf_counter()
    tracemalloc.start()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fuzzed.npz")
        executions = 0
        while executions < args.executions:
            if args.seconds is not None and time.perf_counter() - start > args.seconds:
                break
            case = args.replay if args.replay is not None else master.getrandbits(64)
            base, data = mutant(case)
            outcome, seconds, used = run_one(path, data)
            executions += 1
            if isinstance(outcome, str):
                counts[outcome] += 1
            else:
                counts["other"] += 1
                failures.append((case, base, outcome))
                print(f"OTHER EXCEPTION (seed {case}, from {base}): "
                      f"{type(outcome).__name__}: {outcome}", file=sys.stderr)
                traceback.print_exception(outcome, file=sys.stderr)
                if args.save_failures:
                    os.makedirs(args.save_failures, exist_ok=True)
                    pathlib.Path(args.save_failures, f"{case}.npz").write_bytes(data)
            if seconds > slowest[0]:
                slowest = (seconds, case)
            if used > peak[0]:
                peak = (used, case)
            if seconds > TIME_LIMIT_S or used > MEMORY_LIMIT_BYTES:
                over_bounds.append((case, seconds, used))
            if args.replay is not None:
                break
    tracemalloc.stop()
    elapsed = time.perf_counter() - start
    print(f"executions: {executions} in {elapsed:.1f} s (seed {args.seed})")
    print(f"loaded as a Segmenter (and predicted): {counts['loaded']}")
    print(f"loaded as parameters only: {counts['params only']}")
    print(f"ModelFileError: {counts['ModelFileError']}")
    print(f"other exceptions: {counts['other']}")
    print(f"slowest call: {slowest[0] * 1000:.1f} ms (seed {slowest[1]})")
    print(f"peak memory of a call (tracemalloc): {peak[0] / 2**20:.2f} MiB "
          f"(seed {peak[1]})")
    print(f"calls over the bounds ({TIME_LIMIT_S:g} s, "
          f"{MEMORY_LIMIT_BYTES / 2**20:g} MiB): {len(over_bounds)}")
    for case, seconds, used in over_bounds[:10]:
        print(f"  seed {case}: {seconds * 1000:.1f} ms, {used / 2**20:.2f} MiB")
    return 1 if failures or over_bounds else 0


if __name__ == "__main__":
    sys.exit(main())
