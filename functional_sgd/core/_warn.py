"""Where the package's warnings point: at the user's line that called it.

A warning raised with :func:`caller_stacklevel` is filed under that line,
so Python's default filter shows it once per calling line (a loop of
calls warns once), and ``warnings`` filters and pytest's capture work as
they do for any warning.
"""

import sys

_PACKAGE = __name__.split(".")[0]


def caller_stacklevel():
    """The ``stacklevel`` that makes a warning point at the first caller
    outside this package, however deep inside it the warning is raised."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == _PACKAGE:
        frame, level = frame.f_back, level + 1
    return level
