"""Griffe extension: docstrings written for ``help()`` and doctest, read as Markdown.

The docstrings carry their examples as bare doctests (``>>>`` lines and
their output), which ``pytest --doctest-modules`` runs. Markdown would read
them as quotes and their output (``[3.1, 2.4]``) as links, so each run of
doctest lines, up to the next blank line, is fenced as ``pycon`` before the
docstring is parsed. Sphinx roles (``:func:`~functional_sgd.stream```)
become code (``stream``), and reST's ``::`` before a literal block a colon.
The source is not changed.
"""

import re

import griffe

SPHINX_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|obj):`~?([^`]+)`")
LITERAL_BLOCK_COLONS = re.compile(r"(?<=\S)::$", re.MULTILINE)  # reST's "...:" + literal block


def fence_doctests(text):
    """Returns ``text`` with every doctest run wrapped in a ``pycon`` fence."""
    text = SPHINX_ROLE.sub(lambda role: f"`{role.group(1).rsplit('.', 1)[-1]}`", text)
    text = LITERAL_BLOCK_COLONS.sub(":", text)
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
