"""Griffe extension: a docstring's doctests rendered as Python sessions.

The docstrings carry their examples as bare doctests (``>>>`` lines and
their output), which ``pytest --doctest-modules`` runs. Markdown would read
them as quotes and their output (``[3.1, 2.4]``) as links, so each run of
doctest lines, up to the next blank line, is fenced as ``pycon`` before the
docstring is parsed. The source is not changed.
"""

import griffe


def fence_doctests(text):
    """Returns ``text`` with every doctest run wrapped in a ``pycon`` fence."""
    lines, out, inside, indent = text.splitlines(), [], False, ""
    for line in lines:
        stripped = line.lstrip()
        if not inside and stripped.startswith(">>>"):
            inside, indent = True, line[: len(line) - len(stripped)]
            out.append(f"{indent}```pycon")
        elif inside and not stripped:
            inside = False
            out.append(f"{indent}```")
        out.append(line)
    if inside:
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
