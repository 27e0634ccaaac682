"""Property-based fuzzing of the model-file reader (hypothesis).

The property, on mutants of valid model files (plain parameters and a
Segmenter's, deflated and stored): ``model_file.load`` and
``Segmenter.load`` (and a prediction when it loads) return, or raise
ModelFileError, never another exception, each call within
``fuzz.TIME_LIMIT_S`` (2 s) and a tracemalloc peak below
``fuzz.MEMORY_LIMIT_BYTES`` (64 MiB). The mutations and the property check
are those of ``tools/fuzz_model_file.py``, the standalone long-run fuzzer;
here hypothesis draws them (and shrinks a failure). The "ci" profile of
conftest.py runs 30 examples per test; ``HYPOTHESIS_PROFILE=long`` 2000.

Every failure found is kept below as an ``@example`` or a plain test.
"""

import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_model_file import fuzz  # noqa: E402 (tools/fuzz_model_file.py)

SEEDS = fuzz.seed_files()
NAMES = sorted(SEEDS)
SEGMENTER_NAMES = [n for n in NAMES if n.startswith("segmenter")]


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "mutant.npz"


def check(path, data):
    """The property: an outcome, in time and memory; anything else raises."""
    outcome, seconds, peak = fuzz.run_one(path, data)
    if not isinstance(outcome, str):
        raise outcome
    assert seconds < fuzz.TIME_LIMIT_S, f"{seconds:.2f} s"
    assert peak < fuzz.MEMORY_LIMIT_BYTES, f"{peak / 2**20:.1f} MiB"
    return outcome


def test_every_seed_file_loads(path):
    for name in NAMES:
        want = "loaded" if name.startswith("segmenter") else "params only"
        assert check(path, SEEDS[name]) == want, name


names = st.sampled_from(NAMES)


@given(name=names, rnd=st.randoms(use_true_random=False))
def test_random_mutations(path, name, rnd):
    """The standalone fuzzer's mutations, drawn by hypothesis."""
    check(path, fuzz.mutate(rnd, SEEDS[name]))


#: Mutants of ``tools/fuzz_model_file.py`` (its ``--replay`` seeds) that
#: failed before the reader was hardened, with what they raised then.
FUZZER_REGRESSIONS = {
    14984818927713528932: "ValueError: boundary must be one of ...; got False "
                          "(at predict, of a Segmenter that loaded)",
    16448235973081859711: "TypeError: memory_budget must be an integer or None, "
                          "got bool False (at predict)",
    263628224576720244: "KeyError: 'validation_loss_curve'",
    16683210123892115390: "ValueError: Exceeds the limit (4300 digits) for integer "
                          "string conversion",
    17022097051562520599: "TypeError: float() argument must be ... not 'dict'",
    12701321148586849014: "TypeError: 'int' object is not iterable",
    271707404979164470: "ValueError: x must be finite (at predict: a NaN std)",
    2628557591746230226: "RecursionError: maximum recursion depth exceeded while "
                         "decoding a JSON array",
    3589569443720198263: "tokenize.TokenError: EOF in multi-line statement",
    12567410253873574261: "NotImplementedError: zip file version 20.0",
    # over the bounds: deflate bombs read whole (2 to 6 s, 513 to 768 MiB)
    15688473010146788380: "bomb: 2.9 s, 768 MiB",
    8166251064029171718: "bomb: 2.2 s, 768 MiB",
    3391779328945752268: "bomb: 4.1 s, 513 MiB",
    13807127459421034743: "bomb: 0.6 s, 65 MiB",
    6218038462438202985: "bomb: 5.9 s, 513 MiB",
    # after: a finite mean of 1e308 loads (a model of float64 images may
    # hold one); predict on float32 images refuses the overflowing
    # normalised image, naming mean_ and std_
    9542015001359666029: "extreme mean: predict's ValueError",
}


@pytest.mark.parametrize("case", list(FUZZER_REGRESSIONS),
                         ids=[v.split(":")[0] for v in FUZZER_REGRESSIONS.values()])
def test_standalone_fuzzer_regressions(path, case):
    # the replayed mutations are of the seed files' bytes: found on the
    # format-version-1 seeds, they now mutate the version-2 files (more
    # hyper-parameters), so only the property is asserted, not the outcome
    # they had then (the extreme mean is tested in test_model_file_v2.py)
    base, data = fuzz.mutant(case)
    check(path, data)


@given(name=names, flips=st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 7)),
                                  min_size=1, max_size=8))
def test_bit_flips(path, name, flips):
    data = bytearray(SEEDS[name])
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    check(path, bytes(data))


@given(name=names, cut=st.integers(0, 2**16))
def test_truncation(path, name, cut):
    data = SEEDS[name]
    assert check(path, data[:cut % len(data)]) == "ModelFileError"


@given(name=names, at=st.integers(0, 2**16), remove=st.integers(0, 64),
       insert=st.binary(max_size=64))
def test_byte_splices(path, name, at, remove, insert):
    data = SEEDS[name]
    at %= len(data)
    check(path, data[:at] + insert + data[at + remove:])


shapes = st.one_of(
    st.lists(st.integers(-3, 6), max_size=4).map(tuple),
    st.lists(st.integers(-2**70, 2**70), max_size=3).map(tuple),
    st.sampled_from(fuzz.SHAPES))
descrs = st.sampled_from(fuzz.DESCRS)


@given(name=names, member=st.sampled_from(fuzz.MEMBERS), shape=shapes, descr=descrs,
       fortran=st.booleans(), version=st.sampled_from(fuzz.VERSIONS),
       cut=st.none() | st.integers(0, 120), n_data=st.integers(0, 4096),
       length=st.none() | st.sampled_from([0, 1, 2**16 - 1, 2**32 - 1]),
       compress=st.booleans())
# found by hypothesis before the hardening: two negative dimensions make a
# positive count (MemoryError allocating 23.5 GiB; 64 MiB for the second),
# a header length field of 1 (tokenize.TokenError), a huge shape, an
# unterminated header (SyntaxError, then TokenError)
@example(name="params-float32-no-c-deflated", member="K.npy", shape=(-56177, -56243),
         descr="<f8", fortran=False, version=(1, 0), cut=None, n_data=0, length=None,
         compress=False)
@example(name="params-float32-no-c-deflated", member="K.npy", shape=(-219, -38296),
         descr="<f8", fortran=False, version=(1, 0), cut=None, n_data=0, length=None,
         compress=False)
@example(name="params-float32-no-c-deflated", member="K.npy", shape=(), descr="<f8",
         fortran=False, version=(1, 0), cut=None, n_data=0, length=1, compress=False)
@example(name="params-float64-deflated", member="K.npy", shape=(2**62,), descr="<f8",
         fortran=False, version=(1, 0), cut=None, n_data=8, length=None,
         compress=True)
@example(name="params-float64-stored", member="metadata.npy", shape=(3,),
         descr="<f8", fortran=False, version=(1, 0), cut=40, n_data=8, length=None,
         compress=False)
def test_crafted_npy_headers(path, name, member, shape, descr, fortran, version, cut,
                             n_data, length, compress):
    """A member replaced by a .npy of any shape (huge, negative), dtype
    (object, structured, zero-size), order and version, its header cut short
    (unterminated) or its length field lying, and data of any length."""
    text = fuzz.npy_header_text(shape, descr, fortran)
    if cut is not None:
        text = text[:cut]
    raw = fuzz.npy_bytes(text, bytes(n_data), version, length)
    data = fuzz.replace_members(SEEDS[name], {member: fuzz.member(member, raw,
                                                                  compress)})
    check(path, data)


@given(name=names, member=st.sampled_from(fuzz.MEMBERS),
       mib=st.sampled_from([1, 2, 64, 256]), honest=st.booleans())
# found by hypothesis before the hardening: read whole (65 MiB)
@example(name="params-float32-no-c-deflated", member="K.npy", mib=64, honest=True)
def test_deflate_bombs(path, name, member, mib, honest):
    what = "metadata" if member == "metadata.npy" else "array"
    bomb = fuzz.bomb_member(member, mib * 2**20, honest, what)
    check(path, fuzz.replace_members(SEEDS[name], {member: bomb}))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
    | st.sampled_from(fuzz.RAW_JSON).map(fuzz.RawJSON),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12)


@given(name=st.sampled_from(SEGMENTER_NAMES + NAMES[:1]),
       edits=st.lists(st.tuples(st.integers(0, 10**6),
                                st.sampled_from(["delete", "replace", "retype"]),
                                json_values), min_size=1, max_size=3),
       compress=st.booleans())
@example(name="segmenter-deflated", edits=[(0, "replace", fuzz.RawJSON("1" * 5000))],
         compress=True)
@example(name="segmenter-deflated", edits=[(3, "replace", {"0": {}})], compress=True)
def test_metadata_edits(path, name, edits, compress):
    """Keys deleted, values replaced by any JSON (deep, huge, NaN) or retyped,
    anywhere in the metadata (the hyper-parameters included)."""
    meta = fuzz.metadata_of(SEEDS[name])
    for index, op, value in edits:
        paths = fuzz.paths_of(meta)
        if not paths:
            break
        meta = fuzz.edit_json(meta, paths[index % len(paths)], op, value)
    text = fuzz.dump_json(meta)
    check(path, fuzz.with_metadata_text(SEEDS[name], text, compress))


@given(field=st.sampled_from(["mean", "std", "class_weight", "loss_curve",
                              "in_channels", "n_classes", "n_iter",
                              "validation_score", "hyper_parameters"]),
       value=json_values)
# before the hardening: classes_ = arange(n_classes) allocated 16 GiB (killed)
@example(field="n_classes", value=2**31)
@example(field="n_classes", value=10**30)
@example(field="std", value=[0.0, float("nan")])
@example(field="hyper_parameters", value={"width": True, "boundary": 0})
def test_segmenter_fields(path, field, value):
    """Any JSON value in a field of a Segmenter's metadata."""
    meta = fuzz.metadata_of(SEEDS["segmenter-deflated"])
    meta[field] = value
    text = fuzz.dump_json(meta)
    check(path, fuzz.with_metadata_text(SEEDS["segmenter-deflated"], text))


def test_json_edits_start_from_the_seeds_metadata():
    meta = fuzz.metadata_of(SEEDS["segmenter-stored"])
    assert meta["estimator"] == "arrseg.Segmenter"
    assert fuzz.dump_json(meta) == json.dumps(meta)
    raw = fuzz.dump_json({"a": [fuzz.RawJSON("1" * 5000)]})
    assert raw == '{"a": [' + "1" * 5000 + "]}"
