"""Rows of a ``np.memmap`` read from its file, not through its mapping.

Pages a process touches through a file mapping count in its resident memory
until they are unmapped, and Linux maps more than the page asked for (fault
around, whole large folios): gathering 32,000 random rows of a 4 GB memmap
by ``x[rows]`` left 4.2 GB resident. Read with ``os.pread``, only the rows
copied out are the process's memory; the file's pages stay in the page
cache, which the kernel frees under pressure.

Nearby rows are read together: sorted, rows at most ``GAP_BYTES`` apart
share one read (a syscall costs more than copying a kilobyte; a read holds at most that much more than its rows), and no read
crosses a ``WINDOW_BYTES`` boundary, so a read's buffer stays small.
"""

import mmap
import os

import numpy as np

GAP_BYTES = 1024
WINDOW_BYTES = 4 * 2**20


def row_reader(a, name):
    """A function ``rows -> a[rows]`` as a NumPy array, reading ``a``'s file
    with ``pread`` when ``a`` is a memmap of a file this can read that way;
    else indexing ``a`` (what ``a[rows]`` costs, pages mapped included).
    Call ``.close()`` on it when done.

    The file is opened by its name once, and is read through that
    descriptor to the end, so a file replaced later (an atomic rename) does
    not change what is read. A file replaced before, so that the name no
    longer names the file ``a`` maps, is refused. Where the kernel does not
    say which file a mapping holds (no ``/proc/self/maps``), ``a`` is indexed.
    """
    place = _file_place(a)
    if place is None:
        return _Indexed(a)
    filename, start, mapping = place
    try:
        fd = os.open(filename, os.O_RDONLY)
    except OSError as error:
        raise ValueError(
            f"{name} is a np.memmap of {filename}, which fit cannot open for reading "
            f"({error.strerror}); fit reads a memmap's rows from its file. Make the file "
            "readable, or pass np.asarray of the rows you train on.") from None
    same = _same_file(fd, mapping)
    if not same:
        os.close(fd)
        if same is None:
            return _Indexed(a)
        raise ValueError(
            f"{name} is a np.memmap of {filename}, but that file was replaced (or moved) "
            "since the memmap was made: the name now names another file than the one it "
            "maps, and fit reads a memmap's rows from the file by its name. Open the memmap "
            "again to train on the file there now, or pass np.array(memmap) (a copy in "
            "memory) to train on the rows it maps.")
    return _FileRows(a, fd, start, name)


def _same_file(fd, mapping):
    """Whether the open file ``fd`` is the file ``mapping`` (an ``mmap``) maps,
    as the kernel names both in ``/proc/self/maps`` (device and inode: a
    ``stat`` of the name may number a file otherwise, on overlay file
    systems); ``None`` where it cannot tell."""
    try:
        probe = mmap.mmap(fd, 1, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # an empty file, or one that cannot be mapped
        return None
    try:
        files = _mapped_files([_address(mapping), _address(probe)])
    finally:
        probe.close()
    return None if None in files else files[0] == files[1]


def _address(mapping):
    """The address an ``mmap`` starts at (the NumPy view is dropped at once,
    so the mapping can still be closed)."""
    return np.frombuffer(mapping, np.uint8, count=1).ctypes.data


def _mapped_files(addresses):
    """``(device, inode)`` of the file mapped at each address, from
    ``/proc/self/maps``; ``None`` for each where it does not say."""
    found = [None] * len(addresses)
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                low, high = (int(bound, 16) for bound in fields[0].split("-"))
                for i, address in enumerate(addresses):
                    if low <= address < high and len(fields) >= 5:
                        found[i] = (fields[3], fields[4])
    except OSError:
        pass
    return found


class _Indexed:
    def __init__(self, a):
        self.a = a

    def __call__(self, rows):
        return np.asarray(self.a[rows])

    def close(self):
        pass


class _FileRows:
    """``a[rows]`` read with ``pread`` from the open file ``fd``, row 0 of
    ``a`` at byte ``start``."""

    def __init__(self, a, fd, start, name):
        self.fd, self.start, self.name = fd, start, name
        self.dtype, self.row_shape, self.n = a.dtype, a.shape[1:], a.shape[0]
        self.stride, self.row_strides, self.extent = a.strides[0], a.strides[1:], _extent(a)
        if os.fstat(fd).st_size < start + (self.n - 1) * self.stride + self.extent:
            os.close(fd)
            raise ValueError(f"{name} is a np.memmap of {a.filename}, which is shorter than "
                             "the array now: the file was cut or replaced since it was opened.")

    def __call__(self, rows):
        rows = np.asarray(rows)
        rows = np.where(rows < 0, rows + self.n, rows)  # as a[rows] reads -1 (padding)
        unique, inverse = np.unique(rows, return_inverse=True)
        position = self.start + unique.astype(np.int64) * self.stride
        apart = np.diff(position) - self.stride > GAP_BYTES
        apart |= np.diff(position // WINDOW_BYTES) != 0
        first = np.concatenate([[0], np.flatnonzero(apart) + 1])
        last = np.append(first[1:], unique.size) - 1
        spanned = unique[last] - unique[first] + 1  # rows a read covers, unused ones too
        length = spanned * self.stride  # whole strides: the reads join into one strided table
        parts = list(map(os.pread, [self.fd] * first.size, length.tolist(),
                         position[first].tolist()))
        short = [i for i, part in enumerate(parts) if len(part) < length[i]]
        for i in short:  # the file's last row: its final stride may end past the file
            missing = int(length[i]) - len(parts[i])
            if missing > self.stride - self.extent:
                raise ValueError(f"{self.name}'s file ended early: it was cut while fit read it.")
            parts[i] += bytes(missing)
        table = np.ndarray((int(spanned.sum()),) + self.row_shape, self.dtype, b"".join(parts),
                           strides=(self.stride,) + self.row_strides)
        table_at = np.cumsum(spanned) - spanned  # each read's first row in the table
        run = np.repeat(np.arange(first.size), last - first + 1)
        taken = table[table_at[run] + (unique - unique[first][run])]
        return taken[inverse.reshape(rows.shape)]

    def close(self):
        os.close(self.fd)


def _file_place(a):
    """``(filename, byte of row 0, mmap)`` of a memmap whose rows can be read from
    its file with ``pread``, else ``None``: not a memmap, copy-on-write (its
    writes are not in the file), or strides other than forward rows."""
    if not isinstance(a, np.memmap) or not hasattr(os, "pread") or a.ndim == 0 \
            or getattr(a, "filename", None) is None or a.mode == "c" or a.size == 0:
        return None
    if a.strides[0] <= 0 or any(s < 0 for s in a.strides[1:]) or a.strides[0] < _extent(a):
        return None
    mapping = a
    while mapping is not None and not isinstance(mapping, mmap.mmap):
        mapping = mapping.base
    if mapping is None or mapping.closed:
        return None
    # np.memmap maps from its offset rounded down to the allocation granularity.
    mapped_from = a.offset - a.offset % mmap.ALLOCATIONGRANULARITY
    return a.filename, a.ctypes.data - _address(mapping) + mapped_from, mapping


def _extent(a):
    """Bytes from a row's first element to the end of its last one."""
    return sum((n - 1) * s for n, s in zip(a.shape[1:], a.strides[1:])) + a.dtype.itemsize
