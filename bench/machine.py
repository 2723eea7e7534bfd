"""The machine a report ran on, and its measured memory read bandwidth."""

import importlib.metadata
import os
import platform
import threading
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


def read_seconds(array, *, threads=1, repeats=3):
    """Best time of summing ``array`` split over ``threads`` (NumPy releases
    the GIL in reductions, so the threads read in parallel)."""
    parts = np.array_split(array.reshape(-1), threads)
    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=np.add.reduce, args=(part,)) for part in parts]
        began = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = min(best, time.perf_counter() - began)
    return best


def memory_read_bandwidth(nbytes=2 * 2**30, threads=None):
    """GB/s (1e9 bytes a second) of reading a float32 array of ``nbytes``,
    chosen much larger than the last-level cache, with ``threads`` threads
    (default: every core)."""
    threads = threads or os.cpu_count()
    array = np.ones(nbytes // 4, np.float32)  # written once: every page is real
    return array.nbytes / read_seconds(array, threads=threads) / 1e9


def in_cache_read_bandwidth(array, threads=1):
    """GB/s of reading ``array`` again right after reading it: what a step
    that streams the same data every step can hope for."""
    read_seconds(array, threads=threads, repeats=1)  # bring it into cache
    return array.nbytes / read_seconds(array, threads=threads, repeats=20) / 1e9
