"""The embedded default corpus: English prose that ships with every CPython installation.

It is the Python standard library's documentation as the interpreter carries it: the language-reference
and library topics behind ``help()`` (``pydoc_data.topics``) and the docstrings of the standard-library
modules, classes and functions, read with ``ast`` (nothing is imported). About 1.5 MB of text, present on
any machine right after installing lit-lm, with no network and no data download.
"""

import ast
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

VERSION = 1  # bump when the extraction changes, so caches rebuild
MIN_DOC_CHARS = 100
SKIPPED_PACKAGES = {"test", "idlelib", "lib2to3", "site-packages", "dist-packages", "tkinter", "turtledemo", "ensurepip"}


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def fingerprint() -> dict:
    return {"corpus": "python-docs", "version": VERSION, "min_chars": MIN_DOC_CHARS, "python": sys.version, "stdlib": str(_stdlib_root())}


def _topics() -> Iterator[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return
    for key in sorted(topics):
        yield topics[key]


def _docstrings() -> Iterator[str]:
    root = _stdlib_root()
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts[0] in SKIPPED_PACKAGES or "tests" in parts:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


def documents() -> Iterator[str]:
    """Every document of the default corpus, in a fixed order."""
    for doc in (*_topics(), *_docstrings()):
        doc = doc.strip()
        if len(doc) >= MIN_DOC_CHARS:
            yield doc
