"""The command line (``python -m functional_sgd``): its commands, figures,
progress bars and timing.

Built on the public API only: ``functional_sgd`` and ``functional_sgd.lesson``.
"""

from ._cli import main as main
