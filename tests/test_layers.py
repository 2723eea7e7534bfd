"""The lesson, app and reference layers import only what DESIGN.md's layout allows.

Read from the source (every import, at the top or inside a function): the
lesson builds on the core and never on the app; the app uses only public
names (``functional_sgd``, ``functional_sgd.lesson``) and its own modules;
``reference`` never imports ``functional_sgd``.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports(path):
    """``(module, names)`` for every import in ``path``, relative ones made absolute."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    return imports_in(path.read_text(), package)


def imports_in(source, package):
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.append((module, tuple(alias.name for alias in node.names)))
    return found


def ours(module, names):
    """The functional_sgd modules an import reaches (``from pkg import mod`` too)."""
    if not (module == "functional_sgd" or module.startswith("functional_sgd.")):
        return []
    return [module] + [f"{module}.{name}" for name in names]


def files(folder):
    return sorted((ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("path", files("functional_sgd/lesson"), ids=lambda p: p.name)
def test_the_lesson_builds_on_the_core_never_on_the_app(path):
    for module, names in imports(path):
        for reached in ours(module, names):
            assert not reached.startswith("functional_sgd.app"), (path.name, module, names)
        if module.startswith("functional_sgd.") and not module.startswith(
                "functional_sgd.lesson"):
            assert module in ("functional_sgd.core", "functional_sgd.core._checks"), (
                path.name, module)


PUBLIC = ("functional_sgd", "functional_sgd.lesson")


@pytest.mark.parametrize("path", files("functional_sgd/app"), ids=lambda p: p.name)
def test_the_app_uses_only_public_names(path):
    for module, names in imports(path):
        if module.startswith("functional_sgd.app"):
            continue  # its own modules
        if module == "functional_sgd" or module.startswith("functional_sgd."):
            assert module in PUBLIC, (path.name, module)
            private = [name for name in names if name.startswith("_")]
            assert not private, (path.name, module, private)
            assert "app" not in names and "core" not in names, (path.name, module, names)
    tree = ast.parse(path.read_text())
    private_attributes = [node.attr for node in ast.walk(tree)
                          if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                          and node.value.id in ("fsgd", "functional_sgd", "lesson")
                          and node.attr.startswith("_")]
    assert not private_attributes, (path.name, private_attributes)


@pytest.mark.parametrize("path", files("reference"), ids=lambda p: p.name)
def test_reference_never_imports_functional_sgd(path):
    for module, names in imports(path):
        assert not ours(module, names), (path.name, module)


def test_the_reader_sees_imports_of_every_kind():
    """Relative imports resolve against the package, and imports inside functions count."""
    source = ("from ..core import fit\nfrom . import _data\n"
              "def f():\n    from ..app._cli import main\n    import functional_sgd.app\n")
    found = imports_in(source, "functional_sgd.lesson")
    assert sorted(found) == [("functional_sgd.app", ()), ("functional_sgd.app._cli", ("main",)),
                             ("functional_sgd.core", ("fit",)),
                             ("functional_sgd.lesson", ("_data",))]
