"""Building a store: read -> clean -> deduplicate -> split -> train a tokenizer -> encode -> filter -> pack -> shards.

Three streaming passes, each holding one chunk of documents at a time:
  1. sources are read in blocks; worker processes decode, normalise, split, filter by length and hash each chunk
     (exact hashes, MinHash signatures); the main process decides duplicates in corpus order and appends the
     surviving documents to a scratch file of clean text;
  2. whole documents are held out for validation (a seeded random choice) and a tokenizer is trained on (a sample of)
     the training documents;
  3. documents are encoded (`tokenizers` uses every core), junk is filtered by tokens per character, source weights
     are applied, and rows are packed and appended to the train and validation shards.
"""

import json
import logging
import math
import multiprocessing
import os
import sys
import time
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from lit_lm.data.dedup import DedupConfig, DedupStats, Deduplicator, hash_documents
from lit_lm.data.packing import Packer, token_dtype
from lit_lm.data.sources import CorpusError, SourceConfig, read_default_corpus, read_source
from lit_lm.data.store import ShardWriter
from lit_lm.data.text import CleaningConfig, DocumentSplit, decode, normalise, normalise_line_ends, split_documents
from lit_lm.data.tokenizer import SpecialTokens, TokenizerConfig, load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)
CHUNK_BYTES = 4 << 20  # raw text per worker task
ENCODE_BYTES = 1 << 20  # clean text per encode_batch call: bounds memory, keeps every core busy


@dataclass
class Recipe:
    """Everything that shapes a store (its cache key is a hash of this)."""

    sources: list[tuple[SourceConfig, list[Path]]] | None  # None: the embedded default corpus
    split: DocumentSplit
    cleaning: CleaningConfig
    dedup: DedupConfig
    tokenizer: TokenizerConfig
    seq_length: int
    val_fraction: float
    seed: int
    cross_documents: bool


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
    per_source_in: dict[int, int] = field(default_factory=dict)

    def add(self, other: "Counters") -> None:
        for name in ("bytes", "replaced_bytes", "docs_in", "too_short", "too_long", "bad_records", "missing_field"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for s, n in other.per_source_in.items():
            self.per_source_in[s] = self.per_source_in.get(s, 0) + n


# ---- pass 1: clean and deduplicate -------------------------------------------------------------------------------

def _block_texts(kind: str, payload, text_field: str, counters: Counters) -> Iterator[str]:
    if kind in ("text", "text-part"):
        decoded = decode(payload)
        counters.replaced_bytes += decoded.replaced_bytes
        yield decoded.text
    elif kind == "jsonl":
        decoded = decode(payload)
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
    else:  # already-decoded records
        for text in payload:
            yield normalise_line_ends(text)


def clean_chunk(chunk: list[tuple[int, str, object]], text_fields: list[str], split: DocumentSplit,
                cleaning: CleaningConfig, dedup: DedupConfig):
    """Worker: raw blocks -> clean documents, their source ids, counters and dedup hashes."""
    counters, texts, sources = Counters(), [], []
    for source, kind, payload in chunk:
        for text in _block_texts(kind, payload, text_fields[source], counters):
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
               [(i, read_source(source, files, recipe.split)) for i, (source, files) in enumerate(recipe.sources)])
    for index, blocks in streams:
        for kind, payload in blocks:
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


def clean_and_deduplicate(recipe: Recipe, workdir: Path, num_proc: int, progress: bool
                          ) -> tuple[DocumentFile, Counters, DedupStats]:
    """Pass 1: the clean, deduplicated documents in a scratch file, with what happened to the text."""
    total = None if recipe.sources is None else sum(
        os.path.getsize(f) if f.is_file() else 0 for _, files in recipe.sources for f in files)
    text_fields = [s.text_field for s, _ in recipe.sources] if recipe.sources else ["text"]
    work = partial(clean_chunk, text_fields=text_fields, split=recipe.split, cleaning=recipe.cleaning,
                   dedup=recipe.dedup)
    docs, counters, dedup = DocumentFile(workdir / "documents.txt"), Counters(), Deduplicator(recipe.dedup, workdir)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="clean+dedup", disable=not progress)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = multiprocessing.get_context(method).Pool(num_proc) if num_proc > 1 else None
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
    return docs, counters, dedup.stats


# ---- pass 2: hold out validation documents, train a tokenizer ----------------------------------------------------

def validation_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """A seeded random choice of ceil(fraction * n) whole documents (at least one, and at least one left to train)."""
    n_val = min(n - 1, max(1, math.ceil(fraction * n)))
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, n_val, replace=False)] = True
    return mask


def tokenizer_texts(docs: DocumentFile, is_val: np.ndarray, max_bytes: int | None) -> Iterator[list[str]]:
    """Training documents for the tokenizer: all, or every k-th so that about max_bytes are used."""
    sizes = np.diff(np.frombuffer(docs.offsets, dtype=np.int64))
    stride = 1 if max_bytes is None else max(1, math.ceil(int(sizes[~is_val].sum()) / max_bytes))
    seen = 0
    for start, texts in docs.runs(ENCODE_BYTES):
        batch = []
        for i, text in enumerate(texts, start):
            if not is_val[i]:
                if seen % stride == 0:
                    batch.append(text)
                seen += 1
        yield batch


# ---- pass 3: encode, filter junk, weight, pack, write shards -----------------------------------------------------

def encode_and_pack(recipe: Recipe, docs: DocumentFile, is_val: np.ndarray, tokenizer: Tokenizer, out: Path,
                    progress: bool) -> dict:
    special = SpecialTokens.from_tokenizer(tokenizer)
    dtype = token_dtype(tokenizer.get_vocab_size(with_added_tokens=True))
    make = lambda: Packer(recipe.seq_length, special.separator, special.pad, dtype, special.row_start,  # noqa: E731
                          recipe.cross_documents)
    packers = {"train": make(), "val": make()}
    writers = {name: ShardWriter(out / name, recipe.seq_length, dtype) for name in packers}
    weights = [s.weight for s, _ in recipe.sources] if recipe.sources else [1.0]
    rng = np.random.default_rng([recipe.seed, 1])
    sources = np.frombuffer(docs.sources, dtype=np.uint16)
    max_ratio = recipe.cleaning.max_tokens_per_char
    junk, per_source = 0, {i: {"docs_out": 0, "tokens": 0} for i in range(len(weights))}
    split_docs = {"train": 0, "val": 0}
    bar = tqdm(total=len(docs), unit="doc", desc="tokenize+pack", disable=not progress)
    for start, texts in docs.runs(ENCODE_BYTES):
        encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
        draws = rng.random(len(texts))
        batch = {"train": [], "val": []}
        for i, (text, enc) in enumerate(zip(texts, encoded)):
            ids = enc.ids
            if not ids or (max_ratio is not None and len(ids) > max_ratio * len(text)):
                junk += 1
                continue
            doc, source = start + i, int(sources[start + i])
            name = "val" if is_val[doc] else "train"
            weight = 1.0 if name == "val" else weights[source]
            copies = int(weight) + int(draws[i] < weight - int(weight))
            if copies == 0:  # a source weight below 1 leaves this document out
                continue
            batch[name] += [ids] * copies
            split_docs[name] += 1
            per_source[source]["docs_out"] += 1
            per_source[source]["tokens"] += copies * (len(ids) + 1)
        for name, packer in packers.items():
            writers[name].write(*packer.add(batch[name]))
        bar.update(len(texts))
    bar.close()
    for name, packer in packers.items():
        writers[name].write(*packer.finish(pad_last=name == "val"))
        writers[name].close()
    return {"junk_docs": junk, "train_docs": split_docs["train"], "val_docs": split_docs["val"],
            "train_tokens": writers["train"].tokens, "val_tokens": writers["val"].tokens,
            "train_sequences": writers["train"].rows, "val_sequences": writers["val"].rows,
            "per_source": per_source}


# ---- the whole build ---------------------------------------------------------------------------------------------

def build_store(recipe: Recipe, out: Path, num_proc: int = 1, progress: bool = True) -> dict:
    """Build the store into the (empty, temporary) folder `out`; return its data card."""
    start = time.perf_counter()
    workdir = out / "work"
    workdir.mkdir(parents=True)
    docs, counters, stats = clean_and_deduplicate(recipe, workdir, num_proc, progress)
    where = "the embedded default corpus" if recipe.sources is None else "data.paths / data.sources"
    if len(docs) == 0:
        hint = (f" No record has the field {recipe.sources[0][0].text_field!r}: set text_field."
                if counters.missing_field else "")
        raise CorpusError(f"{where} yielded no text after cleaning and deduplication: every file is empty or blank, "
                          f"or every document was filtered.{hint} Point data.paths at text.")
    if len(docs) < 2:
        raise CorpusError(f"{where} holds a single document, so none can be held out for validation; "
                          "set data.split: paragraph, or add files.")
    is_val = validation_mask(len(docs), recipe.val_fraction, recipe.seed)
    cfg = recipe.tokenizer
    if cfg.path is not None:
        tokenizer = load_tokenizer(cfg.path)
    else:
        log.info("training a %s tokenizer (vocab %d)", cfg.kind, cfg.vocab_size)
        if progress:
            print(f"training a {cfg.kind} tokenizer (vocab {cfg.vocab_size}) ...", file=sys.stderr, flush=True)
        tokenizer = train_tokenizer(tokenizer_texts(docs, is_val, cfg.max_train_bytes), cfg)
    packed = encode_and_pack(recipe, docs, is_val, tokenizer, out, progress)
    if packed["train_sequences"] == 0:
        raise CorpusError(f"the training split has fewer than data.seq_length ({recipe.seq_length}) tokens; "
                          "add text to data.paths or lower data.seq_length.")
    tokenizer.save(str(out / "tokenizer.json"))
    for path in workdir.iterdir():
        path.unlink()
    workdir.rmdir()
    per_source = packed.pop("per_source")
    sources = ([{"source": "default corpus (Python docs)"}] if recipe.sources is None else
               [{"source": s.name or ", ".join(s.paths or []), "weight": s.weight} for s, _ in recipe.sources])
    for i, entry in enumerate(sources):
        entry.update(docs_in=counters.per_source_in.get(i, 0), **per_source[i])
    card = {
        "files": sum(len(f) for _, f in recipe.sources) if recipe.sources else 0,
        "bytes": counters.bytes, "replaced_bytes": counters.replaced_bytes, "bad_records": counters.bad_records,
        "docs_in": counters.docs_in, "too_short": counters.too_short, "too_long": counters.too_long,
        "exact_duplicates": stats.exact_duplicates, "near_duplicates": stats.near_duplicates,
        "duplicate_paragraphs": stats.duplicate_paragraphs, "duplicate_chars": stats.duplicate_chars,
        "docs_out": packed["train_docs"] + packed["val_docs"], **packed,
        "tokens": packed["train_tokens"] + packed["val_tokens"],
        "sequences": packed["train_sequences"] + packed["val_sequences"],
        "seq_length": recipe.seq_length, "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "tokenizer": asdict(cfg), "sources": sources, "seconds": round(time.perf_counter() - start, 3),
    }
    (out / "card.json").write_text(json.dumps(card, indent=1))
    return card
