"""The machine a report ran on, and its measured memory read bandwidth."""

import importlib.metadata
import os
import platform
import time

import jax
import numpy as np

LIBRARIES = ("functional-sgd", "jax", "jaxlib", "numpy", "torch", "optax", "scikit-learn",
             "pytest-benchmark")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_devices():
    """Names of the devices torch can use: ``cpu``, ``cuda:i``, ``mps``."""
    try:
        import torch
    except ImportError:
        return []
    devices = ["cpu"]
    devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def machine_info():
    """CPU, cores, memory, devices and library versions, as strings."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": f"{pages * page_size / 2**30:.0f} GiB",
        "platform": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "jax devices": ", ".join(str(d) for d in jax.devices()),
        "torch devices": ", ".join(torch_devices()) or "torch not installed",
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


READ_WIDTH = 64  # columns of the matrix-vector product that reads an array


def read_seconds(array, *, repeats=3):
    """Best time of reading every element of ``array`` once.

    The read is a BLAS matrix-vector product of the array, seen as a
    ``(-1, 64)`` matrix, with a vector of ones: vectorised, so it runs at
    the memory's speed (a NumPy ``sum`` is limited by its adds, at about
    half of that). It runs on one BLAS thread and on all of them, and the
    best counts: when other programs keep the cores busy, BLAS threads that
    wait on each other read slower than one thread alone.
    """
    from threadpoolctl import threadpool_limits  # comes with scikit-learn

    flat = array.reshape(-1)
    matrix = flat[: flat.size // READ_WIDTH * READ_WIDTH].reshape(-1, READ_WIDTH)
    ones = np.ones(READ_WIDTH, matrix.dtype)
    best = float("inf")
    for threads in (1, None):  # None: as many as BLAS likes
        with threadpool_limits(threads):
            for _ in range(repeats):
                began = time.perf_counter()
                matrix @ ones
                best = min(best, time.perf_counter() - began)
    return best * flat.size / matrix.size


def memory_read_bandwidth(nbytes=2 * 2**30):
    """GB/s (1e9 bytes a second) of reading a float32 array of ``nbytes``,
    chosen much larger than the last-level cache."""
    array = np.ones(nbytes // 4, np.float32)  # written once: every page is real
    return array.nbytes / read_seconds(array, repeats=5) / 1e9


def in_cache_read_bandwidth(array):
    """GB/s of reading ``array`` again right after reading it: what a step
    that streams the same data every step can hope for."""
    read_seconds(array, repeats=1)  # bring it into cache
    return array.nbytes / read_seconds(array, repeats=20) / 1e9
