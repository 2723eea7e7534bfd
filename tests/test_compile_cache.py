"""The command line's persistent compile cache: a second run loads what the
first compiled; importing the library sets nothing; the switch turns it off.

Runs the app in fresh interpreters (the cache is a process-wide JAX setting
read before the first compile) and counts JAX's own cache events, not time.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from functional_sgd.app._compile_cache import CACHE_ENV, cache_folder

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Counts the cache's hits and misses and the compiles (or loads) of XLA
# executables while main() runs.
DRIVER = """
import json, sys
import jax.monitoring
counts = {"hits": 0, "misses": 0, "compiles": 0}
def event(name, **kwargs):
    for key, suffix in (("hits", "/cache_hits"), ("misses", "/cache_misses")):
        if name.endswith(suffix):
            counts[key] += 1
def duration(name, seconds, **kwargs):
    if name == "/jax/core/compile/backend_compile_duration":
        counts["compiles"] += 1
jax.monitoring.register_event_listener(event)
jax.monitoring.register_event_duration_secs_listener(duration)
from functional_sgd.app import main
status = main(sys.argv[1:])
print("COUNTS " + json.dumps(counts))
sys.exit(status)
"""

LESSON = ("lesson", "--no-figures", "--no-reference", "--no-progress", "--steps", "20")


def run_app(cache, *argv):
    env = {**os.environ, CACHE_ENV: str(cache),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    done = subprocess.run([sys.executable, "-c", DRIVER, *argv], capture_output=True,
                          text=True, check=False, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    line = [row for row in done.stdout.splitlines() if row.startswith("COUNTS ")][-1]
    return json.loads(line[len("COUNTS "):])


def entries(folder):
    return sorted(p.name for p in pathlib.Path(folder).iterdir()) if folder.exists() else []


def test_second_run_of_the_lesson_loads_every_program(tmp_path):
    cache = tmp_path / "cache"
    first = run_app(cache, *LESSON)
    stored = entries(cache)
    assert first["misses"] > 0 and first["compiles"] >= first["misses"]
    assert len(stored) >= first["misses"]  # every program was written
    second = run_app(cache, *LESSON)
    assert second["misses"] == 0  # (JAX times a load from the cache as a compile too)
    assert second["hits"] == first["hits"] + first["misses"]  # programs run 1 shared, too
    assert entries(cache) == stored


def test_switched_off_nothing_is_cached(tmp_path):
    cache = tmp_path / "cache"
    off = run_app(cache, *LESSON, "--no-compile-cache")
    assert off["hits"] == off["misses"] == 0 and off["compiles"] > 0
    assert entries(cache) == []
    by_env = run_app("0", *LESSON)
    assert by_env["hits"] == by_env["misses"] == 0


def test_importing_the_library_turns_nothing_on():
    env = {k: v for k, v in os.environ.items() if k not in (CACHE_ENV, "JAX_COMPILATION_CACHE_DIR")}
    code = ("import jax, functional_sgd, functional_sgd.lesson, functional_sgd.app; "
            "print(jax.config.jax_compilation_cache_dir)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"


@pytest.mark.parametrize("environ, expected", [
    ({"XDG_CACHE_HOME": "/somewhere"}, "/somewhere/functional-sgd/jax"),
    ({"XDG_CACHE_HOME": "relative"}, str(pathlib.Path.home() / ".cache/functional-sgd/jax")),
    ({}, str(pathlib.Path.home() / ".cache/functional-sgd/jax")),
    ({CACHE_ENV: "/mine", "XDG_CACHE_HOME": "/somewhere"}, "/mine"),
    ({CACHE_ENV: "0"}, None), ({CACHE_ENV: "OFF"}, None),
])
def test_cache_folder(environ, expected):
    folder = cache_folder(environ)
    assert (None if folder is None else str(folder)) == expected
