"""arrseg.io: image and label files read as the arrays written by tifffile,
Pillow and NumPy; unusable files refused in one line naming the file;
writers that leave either a complete file or none."""

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from arrseg.io import FileFormatError, read_image, read_labels
from arrseg.io import render, writers

tifffile = pytest.importorskip("tifffile", reason="the cli extra's tifffile")
Image = pytest.importorskip("PIL.Image", reason="the cli extra's Pillow")

RNG = np.random.default_rng(0)


def _png16(path, a, colour_type):
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour)."""
    H, W = a.shape[:2]
    raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(H))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", W, H, 16, colour_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# -- images -----------------------------------------------------------------------


@pytest.mark.parametrize("mode,shape,dtype", [
    ("L", (9, 7), np.uint8), ("RGB", (9, 7, 3), np.uint8), ("RGBA", (9, 7, 4), np.uint8),
    ("I;16", (9, 7), np.uint16), ("LA", (9, 7, 2), np.uint8),
])
def test_png_images_read_as_written(tmp_path, mode, shape, dtype):
    a = RNG.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    Image.fromarray(a, mode=mode if mode != "I;16" else None).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png")
    want = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
    assert x.dtype == dtype and x.shape == want.shape
    np.testing.assert_array_equal(x, want)


def test_grey_16_bit_png_by_hand(tmp_path):
    a = RNG.integers(0, 65535, size=(6, 5), dtype=np.uint16)
    _png16(tmp_path / "g.png", a, 0)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), a[None])


def test_16_bit_colour_png_is_refused_not_truncated(tmp_path):
    _png16(tmp_path / "c.png", RNG.integers(0, 65535, size=(4, 4, 3), dtype=np.uint16), 2)
    with pytest.raises(FileFormatError, match="16-bit colour PNG.*TIFF"):
        read_image(tmp_path / "c.png")


def test_palette_png_is_colours_as_image_and_indices_as_labels(tmp_path):
    idx = RNG.integers(0, 3, size=(5, 6), dtype=np.uint8)
    im = Image.fromarray(idx, mode="P")
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255]
    im.putpalette(palette + [0] * (768 - 9))
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "p.png"), idx)
    rgb = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(rgb, np.moveaxis(np.array(palette).reshape(3, 3)[idx],
                                                   -1, 0))


def test_jpeg_reads_close_to_what_was_written(tmp_path):
    a = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))
    rgb = np.stack([a, a.T, 255 - a], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    x = read_image(tmp_path / "a.jpg")
    assert x.shape == (3, 16, 16) and x.dtype == np.uint8
    assert np.abs(x.astype(int) - np.moveaxis(rgb, -1, 0)).mean() < 4


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_tiff_pages_are_channels(tmp_path, dtype):
    a = (RNG.random((4, 10, 12)) * 200).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", a, photometric="minisblack")
    x = read_image(tmp_path / "a.tif")
    assert x.dtype == dtype and x.shape == (4, 10, 12)
    np.testing.assert_array_equal(x, a)


def test_tiff_rgb_samples_and_bigtiff(tmp_path):
    rgb = RNG.integers(0, 255, size=(8, 9, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tiff", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tiff"),
                                  np.moveaxis(rgb, -1, 0))
    a = RNG.random((2, 5, 6)).astype(np.float32)
    tifffile.imwrite(tmp_path / "big.tif", a, bigtiff=True)
    with tifffile.TiffFile(tmp_path / "big.tif") as t:
        assert t.is_bigtiff
    np.testing.assert_array_equal(read_image(tmp_path / "big.tif"), a)


def test_grey_tiff_and_npy(tmp_path):
    a = RNG.random((7, 5)).astype(np.float32)
    tifffile.imwrite(tmp_path / "g.tif", a)
    np.save(tmp_path / "g.npy", a)
    np.save(tmp_path / "c.npy", np.stack([a, 2 * a]))
    for name in ("g.tif", "g.npy"):
        np.testing.assert_array_equal(read_image(tmp_path / name), a[None])
    np.testing.assert_array_equal(read_image(tmp_path / "c.npy"), np.stack([a, 2 * a]))


# -- labels -----------------------------------------------------------------------


def test_labels_are_int64_of_any_integer_file(tmp_path):
    y = RNG.integers(0, 5, size=(6, 7))
    Image.fromarray(y.astype(np.uint8)).save(tmp_path / "y.png")
    tifffile.imwrite(tmp_path / "y.tif", y.astype(np.uint16))
    np.save(tmp_path / "y.npy", y.astype(np.int32))
    np.save(tmp_path / "f.npy", y.astype(np.float32))   # whole numbers: accepted
    for name in ("y.png", "y.tif", "y.npy", "f.npy"):
        got = read_labels(tmp_path / name)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, y)


def test_bad_label_files_are_refused(tmp_path):
    np.save(tmp_path / "frac.npy", np.full((3, 3), 0.5))
    np.save(tmp_path / "rgb.npy", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(FileFormatError, match="frac.npy: label images must hold whole"):
        read_labels(tmp_path / "frac.npy")
    with pytest.raises(FileFormatError, match="rgb.npy: a label image must have one "
                                              "channel"):
        read_labels(tmp_path / "rgb.npy")


# -- unusable files ---------------------------------------------------------------


def test_unusable_files_are_one_clear_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY broken")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    (tmp_path / "a.bmp").write_bytes(b"BM")
    (tmp_path / "folder.png").mkdir()
    cases = {
        "missing.png": "missing.png: no such file",
        "folder.png": "folder.png: is a folder",
        "a.bmp": r"a.bmp: unsupported format \(.bmp\)",
        "bad.png": "bad.png: not a readable image",
        "bad.tif": "bad.tif: not a readable TIFF",
        "bad.npy": "bad.npy: not a readable .npy",
        "obj.npy": "obj.npy: not a readable .npy",
    }
    for name, message in cases.items():
        with pytest.raises(FileFormatError, match=message) as info:
            read_image(tmp_path / name)
        assert "\n" not in str(info.value)


# -- writers ----------------------------------------------------------------------


def test_writers_write_what_readers_read(tmp_path):
    P = RNG.random((3, 6, 5)).astype(np.float32)
    writers.write_tiff(tmp_path / "p.tif", P)
    with tifffile.TiffFile(tmp_path / "p.tif") as t:
        assert len(t.pages) == 3
        np.testing.assert_array_equal(t.asarray(), P)
    writers.write_npy(tmp_path / "p.npy", P)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), P)
    labels = RNG.integers(0, 300, size=(6, 5)).astype(np.uint16)
    writers.write_png(tmp_path / "l.png", labels)
    with Image.open(tmp_path / "l.png") as png:
        np.testing.assert_array_equal(np.asarray(png), labels)
    with pytest.raises(FileFormatError, match="PNG holds"):
        writers.write_png(tmp_path / "x.png", P[0])
    assert sorted(os.listdir(tmp_path)) == ["l.png", "p.npy", "p.tif"]


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "p.tif"
    target.write_bytes(b"the old file")

    def interrupted(path, a, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writers.write_tiff(target, np.zeros((2, 2), np.float32))
    assert os.listdir(tmp_path) == ["p.tif"]
    assert target.read_bytes() == b"the old file"


def test_folder_checks(tmp_path):
    writers.check_folder(tmp_path / "new" / "sub")
    assert (tmp_path / "new" / "sub").is_dir() and not os.listdir(tmp_path / "new" / "sub")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileFormatError, match="the output folder is a file"):
        writers.check_folder(tmp_path / "file")
    with pytest.raises(FileFormatError, match="cannot be written"):
        writers.check_folder(tmp_path / "file" / "below")


# -- render -----------------------------------------------------------------------


def test_entropy_is_the_float64_sum():
    P = RNG.dirichlet(np.ones(4), size=(5, 6)).transpose(2, 0, 1)
    P[:, 0, 0] = [1, 0, 0, 0]
    want = np.zeros((5, 6))
    for i in range(5):
        for j in range(6):
            want[i, j] = -sum(p * np.log(p) for p in P[:, i, j] if p > 0)
    got = render.entropy(P)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_colours_are_distinct_and_overlay_is_rgb():
    c = render.class_colours(40)
    assert c.shape == (40, 3) and len({tuple(v) for v in c}) == 40
    image = RNG.integers(0, 65535, size=(1, 8, 9), dtype=np.uint16)
    out = render.overlay(image, RNG.integers(0, 40, size=(8, 9)), 40)
    assert out.shape == (8, 9, 3) and out.dtype == np.uint8


# -- without the cli extra --------------------------------------------------------


def test_missing_pillow_says_which_extra(tmp_path):
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "a.png")
    code = ("import sys; sys.modules['PIL'] = None; sys.modules['PIL.Image'] = None\n"
            "from arrseg.io import read_image, MissingDependencyError\n"
            "try:\n    read_image(sys.argv[1])\n"
            "except MissingDependencyError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.png")],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == ('reading PNG and JPEG files needs the optional '
                                   'package Pillow, which is not installed: '
                                   'pip install "arrseg[cli]"')
