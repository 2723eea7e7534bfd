"""JAX's persistent compilation cache, for the command line only.

Every run of ``python -m functional_sgd lesson`` would otherwise compile the
same small programs from scratch (seconds on a 100-row problem). The command
line keeps XLA's executables in the user's cache folder, so a second run
loads them; the library itself never turns the cache on (importing
``functional_sgd`` changes no JAX setting).

The folder is ``$FUNCTIONAL_SGD_COMPILE_CACHE`` when that is a path,
else ``$XDG_CACHE_HOME/functional-sgd/jax`` (``~/.cache`` when unset).
``--no-compile-cache``, or ``FUNCTIONAL_SGD_COMPILE_CACHE=0``, turns it off;
a cache folder the user gave JAX (``JAX_COMPILATION_CACHE_DIR``) is kept.
Tracing and lowering still run each time: only XLA's compile is skipped.
"""

import os
import pathlib
import sys

CACHE_ENV = "FUNCTIONAL_SGD_COMPILE_CACHE"
OFF = ("0", "off", "false", "no")


def cache_folder(environ=None):
    """Where the command line keeps compiled programs, or ``None`` when it is off.

    >>> str(cache_folder({"XDG_CACHE_HOME": "/tmp/c"}))
    '/tmp/c/functional-sgd/jax'
    >>> cache_folder({CACHE_ENV: "off"}) is None
    True
    """
    environ = os.environ if environ is None else environ
    value = environ.get(CACHE_ENV, "").strip()
    if value.lower() in OFF:
        return None
    if value:
        return pathlib.Path(value).expanduser()
    base = environ.get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative XDG_CACHE_HOME is invalid and to be ignored.
    base = pathlib.Path(base) if os.path.isabs(base) else pathlib.Path.home() / ".cache"
    return base / "functional-sgd" / "jax"


def use_compile_cache(folder):
    """Turns JAX's persistent cache on in ``folder`` for this process; returns
    the folder in use (the user's own JAX setting wins), ``None`` if none.

    Every program is cached, however fast it compiled and however small: the
    lesson's programs compile in a fraction of a second each, under JAX's
    default threshold of one second, yet add up to seconds a run.
    """
    import jax

    given = jax.config.jax_compilation_cache_dir
    if given:
        return given
    if folder is None:
        return None
    try:
        pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a read-only home: run without the cache, and say so
        print(f"note: compiling without a cache ({error})", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(folder)
