"""``python -m functional_sgd``: the command line."""

import sys

from .app import main

if __name__ == "__main__":
    sys.exit(main())
