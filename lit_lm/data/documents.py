"""Pass 1 of a build: a recipe's sources -> clean, deduplicated documents, appended to one scratch file.

Sources are read in blocks; worker processes decode, normalise, split, filter by length and hash each chunk (exact
hashes, MinHash signatures); the main process decides duplicates in corpus order and keeps the survivors.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import threading
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from lit_lm.data.dedup import DedupConfig, Deduplicator, DedupStats, hash_documents
from lit_lm.data.sources import CorpusError, read_default_corpus
from lit_lm.data.text import (
    CleaningConfig,
    DocumentSplit,
    decode,
    drop_long_lines,
    normalise,
    normalise_line_ends,
    split_documents,
)

if TYPE_CHECKING:
    from lit_lm.data.recipe import Recipe

CHUNK_BYTES = 4 << 20  # raw text per worker task


@dataclass
class Counters:
    """What happened to the text, for the data card."""

    bytes: int = 0
    replaced_bytes: int = 0
    docs_in: int = 0
    too_short: int = 0
    too_long: int = 0
    bad_records: int = 0
    missing_field: int = 0
    long_lines: int = 0
    """Lines dropped for being longer than data.cleaning.max_line_chars."""
    binary_files: int = 0
    """Text files left out because they are binary (see lit_lm.data.sources.sniff)."""
    empty_files: int = 0
    damaged_files: int = 0
    """Compressed files that end early or are corrupt: read up to the damage (see lit_lm.data.sources.DAMAGED)."""
    per_source_in: dict[int, int] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    """A few of the files left out, by why ("binary", "empty", "damaged"), to name in the warning."""

    CARD = ("replaced_bytes", "bad_records", "long_lines", "binary_files", "empty_files", "damaged_files")
    """The counts of cleaned-away input that the data card shows (besides bytes, docs_in, too_short, too_long)."""

    def add(self, other: "Counters") -> None:
        for name in ("bytes", "replaced_bytes", "docs_in", "too_short", "too_long", "bad_records", "missing_field",
                     "long_lines"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for s, n in other.per_source_in.items():
            self.per_source_in[s] = self.per_source_in.get(s, 0) + n


def _block_texts(kind: str, payload, text_field: str, counters: Counters, encoding: str = "utf-8") -> Iterator[str]:
    if kind in ("text", "text-part"):
        decoded = decode(payload, encoding)
        counters.replaced_bytes += decoded.replaced_bytes
        yield decoded.text
    elif kind == "jsonl":
        decoded = decode(payload, encoding)
        counters.replaced_bytes += decoded.replaced_bytes
        for line in decoded.text.split("\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                counters.bad_records += 1
                continue
            text = record.get(text_field) if isinstance(record, dict) else None
            if isinstance(text, str):
                yield normalise_line_ends(text)
            else:
                counters.missing_field += 1
    elif kind == "records":  # already-decoded records ("skipped" files hold none)
        for text in payload:
            yield normalise_line_ends(text)


def clean_chunk(chunk: list[tuple[int, str, object]], text_fields: list[str], split: DocumentSplit,
                cleaning: CleaningConfig, dedup: DedupConfig):
    """Worker: raw blocks -> clean documents, their source ids, counters and dedup hashes."""
    counters, texts, sources = Counters(), [], []
    for source, kind, payload in chunk:
        for text in _block_texts(kind, payload, text_fields[source], counters, cleaning.encoding):
            text, dropped = drop_long_lines(text, cleaning.max_line_chars)
            counters.long_lines += dropped
            for doc in split_documents(text, split):
                counters.docs_in += 1
                counters.per_source_in[source] = counters.per_source_in.get(source, 0) + 1
                doc = normalise(doc, cleaning)
                if len(doc) < cleaning.min_chars:
                    counters.too_short += 1
                elif cleaning.max_chars is not None and len(doc) > cleaning.max_chars:
                    counters.too_long += 1
                else:
                    texts.append(doc)
                    sources.append(source)
    return sources, counters, hash_documents(texts, dedup)


def _chunks(recipe: Recipe, progress: tqdm, counters: Counters) -> Iterator[list[tuple[int, str, object]]]:
    """Raw blocks of every source, grouped into tasks of about CHUNK_BYTES (counting the bytes read)."""
    chunk, size = [], 0
    streams = ([(0, read_default_corpus())] if recipe.sources is None else
               [(i, source.blocks(recipe.split)) for i, source in enumerate(recipe.sources)])
    for index, blocks in streams:
        for kind, payload in blocks:
            if kind == "skipped":  # a binary or empty file, left out whole; a damaged one from the damage on
                why, path = payload
                setattr(counters, f"{why}_files", getattr(counters, f"{why}_files") + 1)
                counters.skipped.setdefault(why, []).append(path)
                continue
            n = len(payload) if isinstance(payload, bytes) else sum(len(t) for t in payload)
            progress.update(n)
            counters.bytes += n
            chunk.append((index, kind, payload))
            size += n
            if size >= CHUNK_BYTES:
                yield chunk
                chunk, size = [], 0
    if chunk:
        yield chunk


class DocumentFile:
    """Clean documents appended to one scratch file; read back in order, a run of documents at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "wb")
        self.offsets = array("q", [0])
        self.sources = array("H")

    def append(self, text: str, source: int) -> None:
        data = text.encode("utf-8")
        self.file.write(data)
        self.offsets.append(self.offsets[-1] + len(data))
        self.sources.append(source)

    def __len__(self) -> int:
        return len(self.sources)

    def close_writing(self) -> None:
        self.file.close()

    def runs(self, max_bytes: int) -> Iterator[tuple[int, list[str]]]:
        """(first document number, texts) of consecutive runs of about max_bytes."""
        offsets = np.frombuffer(self.offsets, dtype=np.int64)
        with open(self.path, "rb") as f:
            start = 0
            while start < len(self):
                stop = max(start + 1, int(np.searchsorted(offsets, offsets[start] + max_bytes, side="right")) - 1)
                stop = min(stop, len(self))
                data = f.read(int(offsets[stop] - offsets[start]))
                base = offsets[start]
                yield start, [data[offsets[i] - base : offsets[i + 1] - base].decode("utf-8")
                              for i in range(start, stop)]
                start = stop


def _worker_pool(num_proc: int):
    """A pool of ``num_proc`` processes for ``clean_chunk``. Forked (fast) when this process runs no other thread;
    otherwise started by a fresh fork server: a child forked while another thread holds a lock inherits it locked
    (under pytest-xdist a thread blocks reading stdin, which every forked child closes: it hung forever)."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        context = multiprocessing.get_context("fork")
    elif "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # imported once by the server, not by every worker
    else:
        context = multiprocessing.get_context("spawn")
    return context.Pool(num_proc, initializer=_plain_signals)


def _plain_signals() -> None:
    """A pool worker's signals: SIGTERM ends it, whatever handler its parent had when it forked (Lightning's
    notifier only records the signal, so Pool.terminate waited forever for a worker stuck on a lock it inherited
    from one of the parent's threads); Ctrl-C goes to the parent alone, which then ends the pool."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def clean_and_deduplicate(recipe: Recipe, workdir: Path, num_proc: int, progress: bool
                          ) -> tuple[DocumentFile, Counters, DedupStats]:
    """Pass 1: the clean, deduplicated documents in a scratch file, with what happened to the text."""
    total = None if recipe.sources is None else sum(
        os.path.getsize(f) if f.is_file() else 0 for source in recipe.sources for f in source.files)
    text_fields = [s.config.text_field for s in recipe.sources] if recipe.sources else ["text"]
    work = partial(clean_chunk, text_fields=text_fields, split=recipe.split, cleaning=recipe.cleaning,
                   dedup=recipe.dedup)
    docs, counters, dedup = DocumentFile(workdir / "documents.txt"), Counters(), Deduplicator(recipe.dedup, workdir)
    pool = _worker_pool(num_proc) if num_proc > 1 else None  # before the progress bar starts its monitor thread
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="clean+dedup", disable=not progress)
    try:
        pending: deque = deque()

        def take() -> None:
            sources, chunk_counters, hashed = pending.popleft().get() if pool else pending.popleft()
            counters.add(chunk_counters)
            for i, text in dedup.filter(hashed):
                docs.append(text, sources[i])

        for chunk in _chunks(recipe, bar, counters):  # at most 2 tasks per worker in flight: memory stays bounded
            pending.append(pool.apply_async(work, (chunk,)) if pool else work(chunk))
            while len(pending) > (2 * num_proc if pool else 0):
                take()
        while pending:
            take()
    finally:
        if pool:
            pool.terminate()
        bar.close()
        docs.close_writing()
        dedup.close()
    if len(docs) == 0 and counters.binary_files:
        raise CorpusError(f"data.paths: no text to train on: {counters.binary_files} file(s) are binary "
                          f"({_some(counters.skipped['binary'])}) and were left out; point data.paths at text files "
                          "(.txt .md .rst .jsonl .parquet, optionally .gz).")
    for line in cleaning_warnings(counters, recipe.cleaning):
        print(f"warning: {line}", file=sys.stderr, flush=True)
    return docs, counters, dedup.stats


def _some(paths: list[str], n: int = 3) -> str:
    return ", ".join(paths[:n]) + (f" and {len(paths) - n} more" if len(paths) > n else "")


def cleaning_warnings(counters: Counters, cleaning: CleaningConfig) -> list[str]:
    """One line per kind of input that was cleaned away, with its count, the setting behind it and the fix."""
    lines = []
    if counters.binary_files:
        lines.append(f"data.paths: left out {counters.binary_files} binary file(s) ({_some(counters.skipped['binary'])}"
                     "): a NUL byte near the start (an image, an archive, UTF-16 text); convert text to UTF-8, or "
                     "leave such files out of data.paths.")
    if counters.empty_files:
        lines.append(f"data.paths: left out {counters.empty_files} empty file(s) ({_some(counters.skipped['empty'])}).")
    if counters.damaged_files:
        lines.append(f"data.paths: {counters.damaged_files} compressed file(s) end early or are corrupt "
                     f"({_some(counters.skipped['damaged'])}): their text up to the damage was kept, the rest left out "
                     "(data card: damaged_files); download or compress them again to train on all of it.")
    if counters.replaced_bytes:
        lines.append(f"data.cleaning.encoding: {counters.replaced_bytes} byte sequence(s) were not valid "
                     f"{cleaning.encoding} and became U+FFFD (data card: replaced_bytes); if the files are in another "
                     "encoding, set data.cleaning.encoding (e.g. latin-1 or cp1252) or convert them to UTF-8.")
    if counters.long_lines:
        lines.append(f"data.cleaning.max_line_chars: dropped {counters.long_lines} line(s) longer than "
                     f"{cleaning.max_line_chars} characters (a minified file, a blob, a dump without line breaks; "
                     "data card: long_lines); raise data.cleaning.max_line_chars, or null, to keep them.")
    if counters.bad_records or counters.missing_field:
        lines.append(f"data.paths: left out {counters.bad_records} JSONL line(s) that are not JSON and "
                     f"{counters.missing_field} record(s) without the text field (data card: bad_records); "
                     "check the files, or set text_field in data.sources.")
    return lines


