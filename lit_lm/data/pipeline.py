"""Building a store: read -> clean -> deduplicate -> split -> train a tokenizer -> encode -> filter -> pack -> shards.

Three streaming passes, each holding one chunk of documents at a time:
  1. clean and deduplicate (lit_lm.data.documents): sources are read in blocks, cleaned and hashed by worker
     processes, and the surviving documents appended to a scratch file of clean text;
  2. whole documents are held out for validation (a seeded random choice) and a tokenizer is trained on (a sample of)
     the training documents;
  3. documents are encoded (`tokenizers` uses every core), junk is filtered by tokens per character, source weights
     are applied, and rows are packed and appended to the train and validation shards.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from lit_lm.data import documents
from lit_lm.data.documents import DocumentFile
from lit_lm.data.packing import Packer, token_dtype
from lit_lm.data.sources import CorpusError
from lit_lm.data.store import ShardWriter
from lit_lm.data.tokenizer import SpecialTokens, load_tokenizer, train_tokenizer

if TYPE_CHECKING:
    from lit_lm.data.recipe import Recipe

log = logging.getLogger(__name__)
ENCODE_BYTES = 1 << 20  # clean text per encode_batch call: bounds memory, keeps every core busy

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
    weights = [s.config.weight for s in recipe.sources] if recipe.sources else [1.0]
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
    docs, counters, stats = documents.clean_and_deduplicate(recipe, workdir, num_proc, progress)
    where = "the embedded default corpus" if recipe.sources is None else "data.paths / data.sources"
    if len(docs) == 0:
        hint = (f" No record has the field {recipe.sources[0].config.text_field!r}: set text_field."
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
               [{"source": s.config.name or ", ".join(s.config.paths or []), "weight": s.config.weight}
                for s in recipe.sources])
    for i, entry in enumerate(sources):
        entry.update(docs_in=counters.per_source_in.get(i, 0), **per_source[i])
    card = {
        "files": sum(len(s.files) for s in recipe.sources) if recipe.sources else 0,
        "bytes": counters.bytes, **{name: getattr(counters, name) for name in counters.CARD},
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
