"""A memmap's rows read from its file with pread: the values ``a[rows]`` gives,
for views, offsets, repeated and padding rows; its pages never mapped."""

import os
import sys

import numpy as np
import pytest

from functional_sgd.drivers import _rows
from functional_sgd.drivers._rows import row_reader

RNG = np.random.default_rng(0)
BODY = RNG.normal(size=(500, 6, 3)).astype(np.float32)


@pytest.fixture
def mapped(tmp_path):
    """BODY on disk after 100 bytes of header: a memmap at an unaligned offset."""
    path = tmp_path / "body"
    with open(path, "wb") as file:
        file.write(bytes(100))
        file.write(BODY.tobytes())
    return np.memmap(path, np.float32, "r", offset=100, shape=BODY.shape)


VIEWS = {
    "whole": lambda a: a,
    "rows from 7": lambda a: a[7:],
    "every third row": lambda a: a[::3],
    "a column slice": lambda a: a[:, 2:5],
    "one column": lambda a: a[:, 1, 2],
    "inner step": lambda a: a[:, ::2, 1:],
}


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("gap", [0, 1024, 1 << 20])
def test_rows_read_from_the_file_are_what_indexing_gives(mapped, view, gap, monkeypatch):
    monkeypatch.setattr(_rows, "GAP_BYTES", gap)
    a = VIEWS[view](mapped)
    rows = RNG.integers(-1, a.shape[0], size=(40, 9))  # -1 (padding) and repeats included
    rows[0, :3] = [0, a.shape[0] - 1, a.shape[0] - 1]  # the first and the file's last row
    read = row_reader(a, "data[0]")
    assert isinstance(read, _rows._FileRows)
    got = read(rows)
    read.close()
    expected = VIEWS[view](BODY)[rows]
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_small_windows_split_reads_and_keep_the_values(mapped, monkeypatch):
    monkeypatch.setattr(_rows, "WINDOW_BYTES", 200)  # smaller than a row's stride
    rows = np.arange(500).reshape(50, 10)
    read = row_reader(mapped, "data[0]")
    assert np.array_equal(read(rows), BODY[rows])
    read.close()


def test_writes_through_the_mapping_are_read(tmp_path):
    a = np.memmap(tmp_path / "a", np.float64, "w+", shape=(50, 2))
    a[:] = 1.0
    a[7] = [3.0, 4.0]  # not flushed: the page cache is shared
    read = row_reader(a, "data[0]")
    assert read(np.array([[7, 0]])).tolist() == [[[3.0, 4.0], [1.0, 1.0]]]
    read.close()


def test_what_the_file_cannot_serve_is_indexed(tmp_path, mapped):
    copy_on_write = np.memmap(mapped.filename, np.float32, "c", offset=100, shape=BODY.shape)
    copy_on_write[3] = 0.0  # in this process only: the file does not hold it
    for a in (copy_on_write, mapped[::-1], np.asarray(mapped)):
        read = row_reader(a, "data[0]")
        assert isinstance(read, _rows._Indexed)
        assert np.array_equal(read(np.array([[3, 4]])), a[np.array([[3, 4]])])


def test_a_file_fit_cannot_open_is_refused_naming_it(mapped, monkeypatch):
    def refuse(path, flags):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ValueError, match=r"data\[1\] is a np.memmap of .*body, which fit "
                                         "cannot open for reading \\(Permission denied\\)"):
        row_reader(mapped, "data[1]")


def test_a_file_cut_shorter_than_its_memmap_is_refused(tmp_path):
    a = np.memmap(tmp_path / "a", np.float32, "w+", shape=(1000,))
    os.truncate(tmp_path / "a", 100)
    with pytest.raises(ValueError, match="shorter than the array"):
        row_reader(a, "data[0]")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_reading_rows_maps_none_of_the_files_pages(tmp_path):
    path = tmp_path / "big"
    np.arange(2**20, dtype=np.float32).tofile(path)
    a = np.memmap(path, np.float32, "r", shape=(2**14, 64))
    read = row_reader(a, "data[0]")
    read(RNG.integers(0, a.shape[0], size=(100, 64)))
    read.close()
    assert _resident_kb(str(path)) == 0
    a[RNG.integers(0, a.shape[0], size=100)].sum()  # indexing maps pages: the test can fail
    assert _resident_kb(str(path)) > 0


def _resident_kb(path):
    """Resident kB of this process's mappings of ``path``."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split()[0]
            if "-" in first and not first.endswith(":"):
                inside = line.rstrip().endswith(path)
            elif inside and first == "Rss:":
                total += int(line.split()[1])
    return total
