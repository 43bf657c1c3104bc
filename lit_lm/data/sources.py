"""Where pretraining text comes from: files, folders and globs of plain text."""

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lit_lm.data.text import decode, split_paragraphs

DocumentSplit = Literal["file", "paragraph"]
TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ""}


class CorpusError(ValueError):
    """The corpus the user pointed at cannot be used; the message says which setting to change."""


def resolve_paths(paths: Sequence[str]) -> list[Path]:
    """Expand files, folders (recursively, text files only) and globs into a sorted, de-duplicated file list."""
    found: set[Path] = set()
    for spec in paths:
        spec = os.path.expanduser(str(spec))
        matches = glob.glob(spec, recursive=True) if glob.has_magic(spec) else [spec]
        if not matches:
            raise CorpusError(f"data.paths: the glob {spec!r} matches no file.")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                         and not any(part.startswith(".") for part in p.relative_to(path).parts)]
                if not files:
                    raise CorpusError(f"data.paths: the folder {str(path)!r} holds no text file (.txt, .md, .rst).")
                found.update(files)
            elif path.is_file():
                found.add(path)
            else:
                raise CorpusError(f"data.paths: {spec!r} does not exist; give existing files, folders or globs.")
    return sorted(p.resolve() for p in found)


@dataclass
class CorpusStats:
    files: int = 0
    bytes: int = 0
    replaced_bytes: int = 0
    docs: int = 0
    per_file_docs: dict[str, int] = field(default_factory=dict)


def read_documents(files: Sequence[Path], split: DocumentSplit, stats: CorpusStats) -> Iterator[str]:
    """Documents from text files: one per file, or one per blank-line paragraph. Empty ones are skipped."""
    if split not in ("file", "paragraph"):
        raise CorpusError(f"data.split must be 'file' or 'paragraph', got {split!r}.")
    for path in files:
        raw = path.read_bytes()
        decoded = decode(raw)
        stats.files += 1
        stats.bytes += len(raw)
        stats.replaced_bytes += decoded.replaced_bytes
        docs = [decoded.text.strip()] if split == "file" else split_paragraphs(decoded.text)
        docs = [d for d in docs if d]
        stats.docs += len(docs)
        stats.per_file_docs[str(path)] = len(docs)
        yield from docs


def fingerprint(files: Sequence[Path]) -> list[tuple[str, int, int]]:
    """What identifies a set of files for caching: path, size and modification time of each."""
    return [(str(p), (st := p.stat()).st_size, st.st_mtime_ns) for p in files]
