"""lit_lm/models as one self-contained source file, its module list derived from the imports.

Starting from the modules that define ``EncoderForMaskedLM`` and ``DecoderForCausalLM`` (found with ``inspect``),
every ``lit_lm.models`` import (absolute or relative) is followed, transitively; a package whose ``__init__`` is
imported brings every module in it (that is how a registry filled at class definition finds its entries). The
modules are ordered dependencies first, and their ``lit_lm`` imports are dropped: in one file, the names they import
are already defined above them. ``__init__`` files that only import are left out. Nothing here imports the modules.
"""

import ast
import inspect
import pkgutil
from dataclasses import dataclass
from pathlib import Path

import lit_lm.models
from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM

ROOT_PACKAGE = "lit_lm.models"
SOURCE_ROOT = Path(lit_lm.models.__file__).parents[ROOT_PACKAGE.count(".") + 1]  # the folder holding lit_lm


@dataclass
class Module:
    name: str  # e.g. lit_lm.models.layers.block
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def _path(name: str) -> Path | None:
    """The source file of a ``lit_lm.models`` module or package, or None if there is none of that name."""
    base = SOURCE_ROOT.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _read(name: str) -> Module:
    path = _path(name)
    return Module(name, path, ast.parse(path.read_text(), filename=str(path)))


def lit_lm_imports(module: Module) -> list[ast.ImportFrom]:
    """The module's imports of lit_lm (absolute) or of its own package (relative), each checked bundleable."""
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "lit_lm" for a in node.names):
            raise RuntimeError(f"{module.path}:{node.lineno}: `import lit_lm...` keeps a module object, which one "
                               f"bundled file cannot have; import names with `from lit_lm.models... import ...`.")
        if not isinstance(node, ast.ImportFrom) or not (node.level or (node.module or "").split(".")[0] == "lit_lm"):
            continue
        if node not in module.tree.body:
            raise RuntimeError(f"{module.path}:{node.lineno}: lit_lm is imported inside a function or block; the "
                               f"bundle needs module-level imports only.")
        if any(alias.asname and alias.asname != alias.name for alias in node.names):
            raise RuntimeError(f"{module.path}:{node.lineno}: a lit_lm import renames a name (`as`); one bundled "
                               f"file cannot, so import it under its own name.")
        found.append(node)
    return found


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(module: Module) -> list[str]:
    """The ``lit_lm.models`` modules ``module`` imports, in the order it imports them: ``from P import name`` imports
    the package P (its ``__init__``) unless every name is a submodule of P, which it then imports instead."""
    names = []
    for node in lit_lm_imports(module):
        target = _absolute(module, node)
        if target != ROOT_PACKAGE and not target.startswith(ROOT_PACKAGE + "."):
            raise RuntimeError(f"{module.path}:{node.lineno}: the models import {target}, outside {ROOT_PACKAGE}; "
                               f"a custom-code export carries {ROOT_PACKAGE} only.")
        is_package = _path(target).name == "__init__.py"
        submodules = [a.name for a in node.names if is_package and _path(f"{target}.{a.name}")]
        if used := [n.id for n in ast.walk(module.tree) if isinstance(n, ast.Name) and n.id in submodules]:
            raise RuntimeError(f"{module.path}:{node.lineno}: the module object {used[0]} is used, which one bundled "
                               f"file cannot have; import the names it needs from {target}.{used[0]}.")
        submodules = [f"{target}.{name}" for name in submodules]
        names += ([] if len(submodules) == len(node.names) else [target]) + submodules
    return names


def package_modules(package: Module) -> list[str]:
    """Every module and subpackage directly in ``package``."""
    return sorted(f"{package.name}.{info.name}" for info in pkgutil.iter_modules([str(package.path.parent)]))


def _only_imports(module: Module) -> bool:
    """An ``__init__`` that defines nothing of its own (its imports and ``__all__`` at most)."""
    return module.is_package and not (top_level_names(module.tree) - {"__all__"})


def top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def model_modules() -> list[str]:
    """The modules that define the two models."""
    return sorted({inspect.getmodule(cls).__name__ for cls in (EncoderForMaskedLM, DecoderForCausalLM)})


def bundled_modules(roots: list[str] | None = None) -> list[Module]:
    """The modules ``roots`` (default: the models') need, themselves included, dependencies first; ``__init__``
    files that only import are left out."""
    roots = model_modules() if roots is None else roots
    order: list[Module] = []
    state: dict[str, str] = {}  # name -> "visiting" | "done"

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise RuntimeError(f"the models import each other in a circle ({' -> '.join(chain + (name,))}); one "
                               f"bundled file needs an order in which every module follows what it imports.")
        state[name] = "visiting"
        module = _read(name)
        for dependency in imported_modules(module):
            visit(dependency, chain + (name,))
        state[name] = "done"
        order.append(module)
        if module.is_package:  # its modules belong to it, but need not come before it
            for member in package_modules(module):
                if member not in state:
                    visit(member, ())

    for root in roots:
        visit(root, ())
    return [module for module in order if not _only_imports(module)]


def _without_lit_lm_imports(module: Module) -> str:
    drop = {line for node in lit_lm_imports(module) for line in range(node.lineno, node.end_lineno + 1)}
    return "\n".join(line for i, line in enumerate(module.path.read_text().splitlines(), start=1) if i not in drop)


def bundle_source(tail: Path | None = None, roots: list[str] | None = None) -> str:
    """The modules ``roots`` (default: the models') need in one file, then the file ``tail`` (e.g. the HuggingFace
    wrapper), with no lit_lm import."""
    modules = bundled_modules(roots)
    if tail is not None:
        modules.append(Module(tail.stem, tail, ast.parse(tail.read_text(), filename=str(tail))))
    defined_in: dict[str, str] = {}
    for module in modules:
        for name in top_level_names(module.tree) - {"__all__"}:
            if name in defined_in:
                raise RuntimeError(f"{name} is defined in both {defined_in[name]} and {module.name}; rename one so the "
                                   f"models can be bundled into one file.")
            defined_in[name] = module.name
    parts = []
    for module in modules:
        where = module.path.relative_to(SOURCE_ROOT).as_posix()
        parts.append(f"\n# ---- {where} ----\n{_without_lit_lm_imports(module)}\n")
    return "".join(parts)

