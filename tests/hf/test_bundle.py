"""The custom-code bundle finds its modules from the imports: every module the models load, dependencies first."""

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest

from lit_lm.hf import bundle
from lit_lm.hf.bundle import ROOT_PACKAGE, bundle_source, bundled_modules, imported_modules, package_modules


@pytest.mark.slow
def test_every_lit_lm_models_module_the_models_load_is_bundled_or_an_import_only_init():
    code = ("import sys, json; import lit_lm.models; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.startswith('{ROOT_PACKAGE}'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       env={**os.environ}).stdout)
    bundled = {module.name for module in bundled_modules()}
    left_out = set(loaded) - bundled
    assert bundled <= set(loaded) and len(bundled) > 5
    for name in left_out:  # only __init__ files that define nothing may stay out
        init = bundle._read(name)
        assert init.is_package and not bundle.top_level_names(init.tree) - {"__all__"}, name


def test_every_bundled_module_follows_the_modules_it_imports():
    order = [module.name for module in bundled_modules()]
    for position, module in enumerate(bundled_modules()):
        for dependency in imported_modules(module):
            if dependency in order:
                assert order.index(dependency) < position, f"{module.name} comes before {dependency}"


def test_the_bundle_imports_nothing_of_lit_lm():
    tree = ast.parse(bundle_source())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level] + \
               [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [name for name in imported if name.split(".")[0] == "lit_lm"]
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]


def write_tree(root, files: dict[str, str]) -> None:
    for path, text in files.items():
        target = root / "lit_lm" / "models" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))


# A registry package as the models may grow one: a pure-import __init__ that loads every scheme file itself
REGISTRY_TREE = {
    "__init__.py": "",
    "config.py": "SIZE = 4\n",
    "positions/__init__.py": ("import importlib, pkgutil\n"
                              "for info in pkgutil.iter_modules(__path__):\n"
                              "    importlib.import_module(f'{__name__}.{info.name}')\n"),
    "positions/base.py": "REGISTRY = {}\n\ndef register(cls):\n    REGISTRY[cls.__name__] = cls\n    return cls\n",
    "positions/rotary.py": "from .base import register\n\n@register\nclass Rotary:\n    pass\n",
    "positions/toy.py": "from lit_lm.models.positions.base import register\nfrom ..config import SIZE\n\n"
                        "@register\nclass Toy:\n    size = SIZE\n",
    "model.py": "from lit_lm.models import positions\nfrom lit_lm.models.positions.base import REGISTRY\n\n"
                "class Model:\n    schemes = REGISTRY\n",
}


def test_a_registry_package_brings_every_file_in_it_in_an_order_that_runs(tmp_path, monkeypatch):
    write_tree(tmp_path, REGISTRY_TREE)
    monkeypatch.setattr(bundle, "SOURCE_ROOT", tmp_path)
    names = [module.name for module in bundled_modules([f"{ROOT_PACKAGE}.model"])]
    assert set(names) == {f"{ROOT_PACKAGE}.{n}" for n in ("config", "positions.base", "positions.rotary",
                                                          "positions.toy", "model")}
    assert names.index(f"{ROOT_PACKAGE}.positions.base") < names.index(f"{ROOT_PACKAGE}.positions.rotary")
    assert names.index(f"{ROOT_PACKAGE}.config") < names.index(f"{ROOT_PACKAGE}.positions.toy")
    namespace: dict = {}
    exec(bundle_source(roots=[f"{ROOT_PACKAGE}.model"]), namespace)
    assert set(namespace["Model"].schemes) == {"Rotary", "Toy"}
    assert package_modules(bundle._read(f"{ROOT_PACKAGE}.positions"))[0] == f"{ROOT_PACKAGE}.positions.base"


@pytest.mark.parametrize("files, message", [
    ({"a.py": "from lit_lm.models.b import B\nA = 1\n", "b.py": "from lit_lm.models.a import A\nB = 2\n"},
     "in a circle"),
    ({"a.py": "import lit_lm.models.b\n", "b.py": "B = 1\n"}, "module object"),
    ({"a.py": "from lit_lm.models.b import B as C\n", "b.py": "B = 1\n"}, "renames"),
    ({"a.py": "from lit_lm.models import b\nA = b.B\n", "b.py": "B = 1\n"}, "module object b is used"),
    ({"a.py": "def f():\n    from lit_lm.models.b import B\n", "b.py": "B = 1\n"}, "inside a function"),
    ({"a.py": "from lit_lm.data import x\n"}, "outside lit_lm.models"),
], ids=["cycle", "module-import", "alias", "module-used", "nested", "outside"])
def test_what_one_file_cannot_hold_is_a_clear_error(tmp_path, monkeypatch, files, message):
    write_tree(tmp_path, {"__init__.py": "", **files})
    monkeypatch.setattr(bundle, "SOURCE_ROOT", tmp_path)
    with pytest.raises(RuntimeError, match=message):
        bundled_modules([f"{ROOT_PACKAGE}.a"])
