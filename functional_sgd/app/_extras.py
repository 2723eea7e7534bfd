"""What each command needs beyond jax and numpy, checked before it runs.

A missing extra is one line naming the package, the extra that installs it
and, where there is one, the option that does without it; never a
``ModuleNotFoundError`` after minutes of training.
"""

import importlib

from ._progress import wants_progress
from ._shared import UsageError

APP_INSTALL = 'pip install "functional-sgd[app]"'
TORCH_INSTALL = ('pip install "functional-sgd[torch]"; for a CPU-only torch (no CUDA wheels), '
                 "first: pip install torch --index-url https://download.pytorch.org/whl/cpu")

PACKAGES = {"matplotlib": ("matplotlib", APP_INSTALL), "PIL": ("Pillow", APP_INSTALL),
            "sklearn": ("scikit-learn", APP_INSTALL), "tqdm": ("tqdm", APP_INSTALL),
            "torch": ("torch", TORCH_INSTALL)}
"""Module -> (the package that provides it, how to install it)."""


def needs(args):
    """``{module: (what needs it, how to do without)}`` for a parsed command line."""
    wanted = {}
    figures = not getattr(args, "no_figures", True)
    if figures:
        wanted["matplotlib"] = ("the figures", "--no-figures")
    if args.command == "lesson":
        if figures:
            wanted["PIL"] = ("the GIF", "--no-figures")
        if wants_progress(args.progress):
            wanted["tqdm"] = ("the progress bar", "--no-progress")
    elif args.command == "digits":
        if args.data is None:
            wanted["sklearn"] = ("scikit-learn's 8x8 digits",
                                 "--data with a folder of PNG images")
        else:
            wanted["PIL"] = ("reading the PNG images of --data", None)
    elif args.command == "agreement":
        wanted["torch"] = ("the torch reference", None)
    return wanted


def check_extras(args):
    """Raises a one-line :class:`UsageError` for the first module the command
    needs that does not import."""
    for module, (use, without) in needs(args).items():
        try:
            importlib.import_module(module)
        except ImportError as error:  # name the module that is missing: matplotlib needs PIL
            missing = (error.name or module).partition(".")[0]
            package, install = PACKAGES.get(missing, (missing, PACKAGES[module][1]))
            instead = "" if without is None else f", or pass {without}"
            raise UsageError(f"{package} is not installed (needed for {use}): "
                             f"{install}{instead}.") from None
