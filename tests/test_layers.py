"""The package's layers, read from its imports (DESIGN.md, "Layout").

app > lesson > core > drivers > speed > _types: a module imports only its
own layer and the layers below it; the app imports only the public API;
``reference/`` never imports ``functional_sgd``; no module imports itself
back through a cycle. Lazy imports inside functions count too.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "functional_sgd"
LAYERS = {"_types": 0, "speed": 1, "drivers": 2, "core": 3, "lesson": 4, "app": 5}
TOP = 6  # functional_sgd/__init__.py and __main__.py: the public API, above every layer
STEPS = {"_initialize": 1, "_predict": 2, "_loss": 3, "_gradient": 4, "_step": 5,
         "_repeat": 6, "_stop": 7}


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path):
    return path.name == "__init__.py"


def modules(folder):
    return {module_name(p): p for p in sorted(folder.rglob("*.py"))}


ALL = {**modules(PACKAGE), **modules(ROOT / "reference")}


def resolve(name):
    """``name`` if it is a module of ours, else the nearest enclosing one (or None)."""
    while name:
        if name in ALL:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(path):
    """Every module of ours that ``path`` imports, anywhere in the file."""
    here = module_name(path)
    package = here if is_package(path) else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(resolve(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from . import _x` imports the module _x
                found.add(resolve(f"{base}.{alias.name}") if f"{base}.{alias.name}" in ALL
                          else resolve(base))
    found.discard(None)
    found.discard(here)
    return found


def layer(name):
    parts = name.split(".")
    if parts[0] != "functional_sgd":
        return None
    if len(parts) == 1 or parts[1] == "__main__":
        return TOP
    return LAYERS[parts[1]]


def test_every_module_belongs_to_a_layer():
    for name in ALL:
        if name.startswith("functional_sgd"):
            assert layer(name) is not None, name


@pytest.mark.parametrize("name", [n for n in ALL if n.startswith("functional_sgd")])
def test_imports_point_down_the_layers(name):
    mine = layer(name)
    for target in imports(ALL[name]):
        if target.startswith("reference"):
            assert layer(name) == LAYERS["app"], f"{name} imports {target}: only the app may"
            continue
        theirs = layer(target)
        if mine == LAYERS["app"] and theirs != mine:
            public = not any(part.startswith("_") for part in target.split(".")[1:])
            assert public, f"{name} imports {target}: the app uses only the public API"
            continue
        assert theirs <= mine, (f"{name} (layer {mine}) imports {target} (layer {theirs}): "
                                "imports must point down the layers")


def test_reference_never_imports_the_library():
    for name, path in ALL.items():
        if name.startswith("reference"):
            assert not any(t.startswith("functional_sgd") for t in imports(path)), name


def test_no_import_cycles():
    graph = {name: imports(path) for name, path in ALL.items()}
    done, on_path = set(), []

    def visit(name):
        if name in on_path:
            cycle = on_path[on_path.index(name):] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        on_path.append(name)
        for target in sorted(graph[name]):
            # A package's __init__ re-exports its modules: importing a module of
            # the package runs the __init__ first, which is not a cycle.
            if not target.startswith(name + ".") or not is_package(ALL[name]):
                visit(target)
        on_path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The tests above can fail: a made-up pair of modules trips both."""
    fake = tmp_path / "functional_sgd"
    (fake / "speed").mkdir(parents=True)
    (fake / "core").mkdir()
    (fake / "speed" / "_a.py").write_text("from ..core import _b\n")
    (fake / "core" / "_b.py").write_text("def f():\n    from ..speed import _a\n")
    for folder in (fake, fake / "speed", fake / "core"):
        (folder / "__init__.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "ALL", modules(fake))
    with pytest.raises(AssertionError, match="imports must point down"):
        test_imports_point_down_the_layers("functional_sgd.speed._a")
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycles()


@pytest.mark.parametrize("module, step", STEPS.items())
def test_each_of_the_seven_steps_has_a_module_of_its_name(module, step):
    text = (PACKAGE / "core" / f"{module}.py").read_text()
    assert f"Step {step} of the lesson" in ast.get_docstring(ast.parse(text))
