"""arrseg.dask.storage: TIFF and Zarr read lazily equal the arrays written;
stores written have chunks equal to the dask chunks and hold the data;
misaligned chunks are refused; a store-to-store prediction equals the
in-memory one, and runs in memory bounded by a few chunks (measured with
tracemalloc in a subprocess, against the bytes of the whole image)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

import arrseg  # noqa: E402
from arrseg.dask.storage import open_image, store_chunks, write_zarr  # noqa: E402
from arrseg.io import FileFormatError, read_image  # noqa: E402

TIMEOUT = 180


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 600, 700)).astype(np.float32)


# -- reading ----------------------------------------------------------------------


def test_tiled_tiff_reads_lazily_in_its_tiles(tmp_path, image):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, image, tile=(256, 256), photometric="minisblack")
    x = open_image(path)
    assert x.shape == (3, 600, 700) and x.dtype == np.float32
    assert x.chunks == ((3,), (256, 256, 88), (256, 256, 188))
    np.testing.assert_array_equal(x.compute(), image)
    y = open_image(path, chunks=(512, -1))
    assert y.chunks[1:] == ((512, 88), (700,))
    np.testing.assert_array_equal(y[:, 300:520, 100:650].compute(),
                                  image[:, 300:520, 100:650])


def test_tiff_is_read_only_when_computed_and_in_whole_tiles(tmp_path, image,
                                                           monkeypatch):
    from arrseg.dask import storage

    path = tmp_path / "a.tif"
    tifffile.imwrite(path, image, tile=(256, 256), photometric="minisblack")
    reads = []
    real = storage.TiffSource.__getitem__

    def counted(self, index):
        reads.append(index)
        return real(self, index)

    monkeypatch.setattr(storage.TiffSource, "__getitem__", counted)
    x = open_image(path, chunks=512)
    assert reads == []                               # metadata only
    np.testing.assert_array_equal(x.compute(scheduler="sync"), image)
    # one read per dask chunk, each of whole 256 x 256 tiles (or to the edge)
    spans = sorted((r.start, r.stop, c.start, c.stop) for _, r, c in reads)
    assert spans == [(0, 512, 0, 512), (0, 512, 512, 700), (512, 600, 0, 512),
                     (512, 600, 512, 700)]


def test_tiff_axes_become_channels_as_read_image_does(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, tile=(128, 128))          # YXS
    grey = rng.integers(0, 2**16, (200, 90), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "grey.tif", grey, rowsperstrip=64)         # strips
    for name in ("rgb.tif", "grey.tif"):
        x = open_image(tmp_path / name)
        want = read_image(tmp_path / name)
        assert x.shape == want.shape and x.dtype == want.dtype
        np.testing.assert_array_equal(x.compute(), want)
    assert open_image(tmp_path / "rgb.tif").chunks[1:] == ((128, 128, 44),
                                                           (128, 128, 128, 16))
    assert open_image(tmp_path / "grey.tif").chunks == ((1,), (64, 64, 64, 8), (90,))


def test_tiff_array_pickles_and_reads_in_other_processes(tmp_path, image):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, image, tile=(256, 256), photometric="minisblack")
    x = open_image(path)
    # the process pool pickles each task: the TIFF is opened again there
    got = x.compute(scheduler="processes", num_workers=2)
    np.testing.assert_array_equal(got, image)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_stores_read_lazily(tmp_path, image, zarr_format):
    path = tmp_path / "a.zarr"
    z = zarr.create_array(path, shape=image.shape, chunks=(1, 128, 100),
                          dtype=image.dtype, zarr_format=zarr_format)
    z[:] = image
    x = open_image(path)
    assert x.chunks[0] == (3,) and x.chunksize == (3, 128, 100)
    # nothing read at open time: a change made on disk afterwards is seen
    z[:, :10] = -1
    want = image.copy()
    want[:, :10] = -1
    np.testing.assert_array_equal(x.compute(), want)
    assert open_image(path, chunks=(256, 300)).chunks[1:] == ((256, 256, 88),
                                                              (300, 300, 100))


def test_group_component_sharded_and_errors(tmp_path, image):
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    g.create_array("0", shape=image.shape, chunks=(3, 100, 175), shards=(3, 200, 350),
                   dtype=image.dtype)[:] = image
    with pytest.raises(FileFormatError, match="is a Zarr group, not an array.*arrays: 0"):
        open_image(tmp_path / "g.zarr")
    x = open_image(tmp_path / "g.zarr", component="0")
    # a sharded array is read (and must be written) in whole shards
    assert store_chunks(zarr.open(tmp_path / "g.zarr" / "0")) == (3, 200, 350)
    assert x.chunksize == (3, 200, 350)
    np.testing.assert_array_equal(x.compute(), image)
    np.testing.assert_array_equal(open_image(tmp_path / "g.zarr" / "0").compute(), image)
    with pytest.raises(ValueError, match=r"chunks 100: 100 rows is not a multiple of "
                       r"the chunks of .* \(200 rows\)"):
        open_image(tmp_path / "g.zarr", component="0", chunks=100)
    assert open_image(tmp_path / "g.zarr", component="0",
                      chunks=(600, 700)).chunksize == (3, 600, 700)   # whole axes
    with pytest.raises(FileFormatError, match="none.zarr: no such file"):
        open_image(tmp_path / "none.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(FileFormatError, match="empty.zarr: not a readable Zarr array"):
        open_image(tmp_path / "empty.zarr")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00 not a tiff")
    with pytest.raises(FileFormatError, match="bad.tif: not a readable TIFF"):
        open_image(tmp_path / "bad.tif")
    zarr.create_array(tmp_path / "1d.zarr", shape=(5,), dtype="f4")
    with pytest.raises(FileFormatError, match=r"has shape \(5,\)"):
        open_image(tmp_path / "1d.zarr")


# -- writing ----------------------------------------------------------------------


def test_written_chunks_equal_the_dask_chunks(tmp_path, image):
    x = da.from_array(image, chunks=(3, 256, 200))
    z = write_zarr(x * 2, tmp_path / "out.zarr")
    assert z.chunks == (3, 256, 200) and z.shape == image.shape
    back = zarr.open(tmp_path / "out.zarr", mode="r")
    assert back.chunks == (3, 256, 200)
    np.testing.assert_array_equal(back[:], image * 2)
    np.testing.assert_array_equal(open_image(tmp_path / "out.zarr").compute(), image * 2)


def test_existing_store_refused_unless_overwrite(tmp_path, image):
    x = da.from_array(image, chunks=(3, 300, 350))
    write_zarr(x, tmp_path / "out.zarr")
    with pytest.raises(FileExistsError, match="out.zarr: exists; pass overwrite=True"):
        write_zarr(x + 1, tmp_path / "out.zarr")
    np.testing.assert_array_equal(zarr.open(tmp_path / "out.zarr")[:], image)
    write_zarr(x + 1, tmp_path / "out.zarr", overwrite=True)
    np.testing.assert_array_equal(zarr.open(tmp_path / "out.zarr")[:], image + 1)


def test_irregular_and_misaligned_chunks_are_refused(tmp_path, image):
    x = da.from_array(image, chunks=(3, 256, 256))
    with pytest.raises(ValueError, match=r"regular chunks .* rechunk first"):
        write_zarr(x.rechunk({1: (100, 256, 244)}), tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()
    target = zarr.create_array(tmp_path / "t.zarr", shape=image.shape,
                               chunks=(3, 200, 200), dtype=image.dtype)
    with pytest.raises(ValueError, match=r"not aligned .*axis 1: a boundary at 256.*"
                       "misaligned chunks silently corrupt concurrent writes"):
        write_zarr(x, target)
    assert target.nchunks_initialized == 0                 # nothing written
    with pytest.raises(ValueError, match="has shape"):
        write_zarr(x[:, :10], target)
    with pytest.raises(TypeError, match="must be a dask array"):
        write_zarr(image, tmp_path / "b.zarr")
    # dask chunks that are multiples of the Zarr chunks are aligned
    write_zarr(x.rechunk((3, 400, 400)), target)
    np.testing.assert_array_equal(target[:], image)


def test_delayed_writes_share_one_computation(tmp_path, image):
    import dask

    x = da.from_array(image, chunks=(3, 256, 256)) + 1
    w1 = write_zarr(x, tmp_path / "a.zarr", compute=False)
    w2 = write_zarr(x.sum(axis=0), tmp_path / "b.zarr", compute=False)
    assert zarr.open(tmp_path / "a.zarr").nchunks_initialized == 0
    dask.compute(w1, w2)
    np.testing.assert_array_equal(zarr.open(tmp_path / "a.zarr")[:], image + 1)
    np.testing.assert_allclose(zarr.open(tmp_path / "b.zarr")[:],
                               (image + 1).sum(axis=0), rtol=1e-6)
    assert zarr.open(tmp_path / "b.zarr").chunks == (256, 256)


# -- out of core: bounded memory, measured --------------------------------------------

# Run in a fresh interpreter: the peak of tracemalloc (every Python and NumPy
# allocation: chunks read, decoded, computed, encoded) from open_image to the
# end of the write, on the threaded scheduler with 2 workers.
MEASURE = textwrap.dedent("""
    import json, sys, tracemalloc
    import dask
    import numpy as np
    from arrseg.dask.storage import open_image, write_zarr
    src, dst, model_path = sys.argv[1:4]
    model = None
    if model_path != "-":
        import arrseg
        model = arrseg.Segmenter.load(model_path)

    def run(x, dst):
        if model is None:
            y = x.astype(np.float64) * 2 + 1
        else:
            y = model.predict_proba(x).astype(np.float32)
        write_zarr(y, dst)

    dask.config.set(scheduler="threads", num_workers=2)
    x = open_image(src)
    one = x[..., :x.chunksize[-2], :x.chunksize[-1]]
    # once untraced: the modules imported on first use (dask.array, zarr,
    # codecs, tifffile) are not the computation's memory
    run(one, dst + "-warm")
    peaks = {}
    # "one" three times, its largest peak: on one chunk the two threads
    # overlap or not, by timing (4.7 to 6.5 MiB), and the bounds compare
    # the whole image's peak with the overlapping case
    for name, image, times in (("one", one, 3), ("whole", x, 1)):
        peak = 0
        for t in range(times):
            tracemalloc.start()
            run(image, dst + (f"-one{t}" if name == "one" else ""))
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        peaks[name] = peak
    print(json.dumps({"one": peaks["one"], "peak": peaks["whole"],
                      "chunks": x.npartitions}))
""")

def _peak(src, dst, model="-"):
    r = subprocess.run([sys.executable, "-c", MEASURE, str(src), str(dst), str(model)],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


CHUNK = 256


def _write_image(folder, x, name):
    tifffile.imwrite(folder / f"{name}.tif", x, tile=(CHUNK, CHUNK),
                     photometric="minisblack")
    z = zarr.create_array(folder / f"{name}.zarr", shape=x.shape,
                          chunks=(1, CHUNK, CHUNK), dtype=x.dtype)
    z[:] = x


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """A 3 x 3072 x 768 float32 image (27 MiB, 12 x 3 chunks of 256 x 256)
    as a tiled TIFF and a Zarr store, both in 256 x 256 chunks."""
    folder = tmp_path_factory.mktemp("large")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 3072, 768)).astype(np.float32)
    _write_image(folder, x, "big")
    return folder, x


def test_tiff_to_zarr_runs_in_memory_of_a_few_chunks(large, tmp_path):
    folder, x = large
    got = _peak(folder / "big.tif", tmp_path / "out.zarr")
    out = zarr.open(tmp_path / "out.zarr", mode="r")
    assert out.chunks == (3, CHUNK, CHUNK) and got["chunks"] == 36
    np.testing.assert_array_equal(out[:], x.astype(np.float64) * 2 + 1)
    # "one": the same pipeline on one chunk (read, float64 result, encode);
    # 2 workers hold about a chunk each (measured: peak / one = 1.7 to 2.3)
    assert got["peak"] < 3 * got["one"], got
    # ... which is far from the whole image: 36 chunks, 27 MiB in, 54 MiB out
    assert 3 * got["one"] < x.nbytes / 2, (got, x.nbytes)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from arrseg.data import make_textures

    folder = tmp_path_factory.mktemp("model")
    xs, ys = make_textures(2, 48, 3, seed=3)
    m = arrseg.Segmenter(width=4, depth=1, kernel_size=3, max_iter=3).fit(xs, ys)
    m.save(folder / "m.npz")
    return folder / "m.npz"


@pytest.mark.parametrize("src", ["big.tif", "big.zarr"])
def test_store_to_store_prediction_equals_in_memory_in_bounded_memory(large, model,
                                                                      tmp_path, src):
    folder, x = large
    got = _peak(folder / src, tmp_path / "P.zarr", model)
    P = zarr.open(tmp_path / "P.zarr", mode="r")
    assert P.chunks == (3, CHUNK, CHUNK) and P.dtype == np.float32
    want = np.asarray(arrseg.Segmenter.load(model).predict_proba(x))
    np.testing.assert_allclose(P[:], want, rtol=0, atol=2e-6)
    # Each chunk is predicted on its haloed block, made from its neighbours:
    # the memory is that of the blocks being predicted (2 workers; "one",
    # the whole pipeline on one chunk, is about 9 input chunks' bytes:
    # hidden maps, probabilities) and of the rows of input chunks that the
    # haloes still need (a few rows of 3 chunks here); never of the image.
    # Measured: peak 20.5 to 23 MiB, one 6.5 MiB; the input alone is 27 MiB
    # (and so is P in float32): holding either whole fails the first bound.
    assert got["peak"] < x.nbytes, (got, x.nbytes)
    assert got["peak"] < 4 * got["one"], got
