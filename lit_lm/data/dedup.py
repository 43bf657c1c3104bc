"""Deduplication: exact (documents and paragraphs, by hash of the normalised text) and near (MinHash + LSH).

Repeated data hurts a small-budget model out of proportion to its share (Hernandez et al. 2022; Lee et al. 2022),
so every document is checked against everything before it, in corpus order, and the first copy is kept.
Memory: numpy arrays, no Python objects: 8 bytes per document and per long paragraph for the exact indexes, and
8 bytes per LSH band (about 14) per document for the near-duplicate index; the MinHash signatures themselves go to a
file on disk, not to RAM.
"""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lit_lm.data.minhash import band_keys, document_hashes, jaccard_estimate, lsh_bands, signatures, word_hashes
from lit_lm.data.text import split_paragraphs


@dataclass
class DedupConfig:
    """Which duplicates are removed before tokenization."""

    exact: bool = True
    """Drop documents whose words (case, whitespace and punctuation folded) were seen before, in the same order."""
    paragraphs: bool = True
    """Drop, inside documents, paragraphs seen before (e.g. licence boilerplate repeated in every file)."""
    paragraph_min_chars: int = 100
    """Paragraphs shorter than this are never dropped (headings, short lines that legitimately repeat)."""
    near: bool = True
    """Drop near-duplicate documents: MinHash over word n-grams, LSH candidates, kept only if the estimated Jaccard
    similarity to an earlier document reaches `threshold`."""
    threshold: float = 0.8
    """Jaccard similarity at or above which two documents are near duplicates."""
    num_perm: int = 128
    """MinHash permutations per signature (more: a better estimate, slower)."""
    ngram: int = 5
    """Words per shingle."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"data.dedup.threshold must be in (0, 1], got {self.threshold}.")
        if self.num_perm < 8 or self.ngram < 1 or self.paragraph_min_chars < 0:
            raise ValueError("data.dedup.num_perm must be >= 8, data.dedup.ngram >= 1, paragraph_min_chars >= 0.")


def text_hash(text: str) -> int:
    """A 64-bit hash of the text with case and whitespace folded, as a signed int64 value (for texts without words)."""
    folded = " ".join(text.lower().split()).encode("utf-8", errors="replace")
    return int.from_bytes(hashlib.blake2b(folded, digest_size=8).digest(), "little", signed=True)


class KeyIndex:
    """A growing set of integer keys, optionally mapped to the first value stored under each, as sorted numpy runs.

    New keys arrive in batches and become a sorted run; runs of similar size are merged (a log-structured merge) up to
    MAX_RUN keys, so a lookup costs a binary search per run, memory is the keys and values themselves, and a merge
    never needs more than a few MAX_RUN-sized temporaries.
    """

    MAX_RUN = 1 << 22

    def __init__(self, key_dtype=np.int64, value_dtype=None) -> None:
        self.key_dtype, self.value_dtype = np.dtype(key_dtype), value_dtype and np.dtype(value_dtype)
        self.runs: list[tuple[np.ndarray, np.ndarray | None]] = []

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self.runs)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The value stored for each key (or 0 without values), or -1 where the key is absent."""
        keys = np.asarray(keys).astype(self.key_dtype, copy=False)
        found = np.full(len(keys), -1, dtype=np.int64)
        for run_keys, run_values in self.runs:
            pos = np.minimum(np.searchsorted(run_keys, keys), len(run_keys) - 1)
            hit = (run_keys[pos] == keys) & (found < 0)
            found[hit] = 0 if run_values is None else run_values[pos[hit]]
        return found

    def add_new(self, keys: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """Store keys not seen before (the first of repeats within the batch wins); return which entries were new."""
        keys = np.asarray(keys).astype(self.key_dtype, copy=False)
        new = np.zeros(len(keys), dtype=bool)
        if len(keys) == 0:
            return new
        unique, first = np.unique(keys, return_index=True)
        fresh = self.lookup(unique) < 0
        new[first[fresh]] = True
        kept_values = None if self.value_dtype is None else np.asarray(values)[first[fresh]].astype(self.value_dtype)
        self._push(unique[fresh], kept_values)
        return new

    def _push(self, keys: np.ndarray, values: np.ndarray | None) -> None:
        if len(keys) == 0:
            return
        self.runs.append((keys, values))
        while (len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0])
               and len(self.runs[-2][0]) + len(self.runs[-1][0]) <= self.MAX_RUN):
            (k1, v1), (k2, v2) = self.runs.pop(), self.runs.pop()
            k = np.concatenate([k2, k1])
            order = np.argsort(k, kind="stable")
            self.runs.append((k[order], None if v1 is None else np.concatenate([v2, v1])[order]))


class SignatureFile:
    """MinHash signatures by document number, appended to a file and read back by row with pread (a memory map of
    the whole file would count every page its scattered candidate rows touch as resident memory)."""

    def __init__(self, path: Path, num_perm: int) -> None:
        self.path, self.num_perm, self.rows = path, num_perm, 0
        self.file = open(path, "w+b")

    def append(self, sig: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(sig, dtype=np.uint32).tobytes())
        self.file.flush()
        self.rows += len(sig)

    def rows_at(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.num_perm), dtype=np.uint32)
        row_bytes, fd = self.num_perm * 4, self.file.fileno()
        for i, row in enumerate(np.asarray(ids).tolist()):
            os.preadv(fd, [memoryview(out[i]).cast("B")], row * row_bytes)
        return out

    def close(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


@dataclass
class HashedDocuments:
    """A chunk of documents with what deduplication needs, computed in a worker process."""

    texts: list[str]
    hashes: np.ndarray
    """int64 hash of each document's word sequence."""
    signatures: np.ndarray | None
    """[documents, num_perm] MinHash signatures, or None without near deduplication."""
    paragraph_doc: np.ndarray
    """For each long paragraph of a multi-paragraph document: the document's index ..."""
    paragraph_index: np.ndarray
    """... the paragraph's index inside it (in `split_paragraphs` order) ..."""
    paragraph_hashes: np.ndarray
    """... and the hash of its folded text."""


def hash_documents(texts: list[str], config: DedupConfig) -> HashedDocuments:
    """Everything the deduplicator decides on, for a chunk of documents (runs in the worker processes)."""
    words = word_hashes(texts)  # one vectorised pass serves the exact hash and the MinHash shingles
    hashes = fold_hashes(texts, words)
    sig = signatures(texts, config.num_perm, config.ngram, words) if config.near and texts else None
    where, long_paragraphs = [], []
    if config.paragraphs:
        for d, text in enumerate(texts):
            if "\n\n" in text:
                for p, paragraph in enumerate(split_paragraphs(text)):
                    if len(paragraph) >= config.paragraph_min_chars:
                        where.append((d, p))
                        long_paragraphs.append(paragraph)
    where_array = np.asarray(where, dtype=np.int64).reshape(-1, 2)
    return HashedDocuments(texts, hashes, sig, where_array[:, 0], where_array[:, 1], fold_hashes(long_paragraphs))


def fold_hashes(texts: list[str], words: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """int64 hashes of texts' word sequences (case, whitespace and punctuation folded), vectorised; a text without
    words is hashed whole."""
    hashes = document_hashes(*(words or word_hashes(texts)), len(texts)).view(np.int64)
    for i in np.flatnonzero(hashes == 0):
        hashes[i] = text_hash(texts[i])
    return hashes


@dataclass
class DedupStats:
    exact_duplicates: int = 0
    near_duplicates: int = 0
    duplicate_paragraphs: int = 0
    duplicate_chars: int = 0


class Deduplicator:
    """Decides, chunk after chunk in corpus order, which documents (and paragraphs) are first seen."""

    def __init__(self, config: DedupConfig, workdir: Path) -> None:
        self.config = config
        self.stats = DedupStats()
        self.documents = KeyIndex()  # 64-bit text hashes: a collision would drop a distinct document
        self.paragraphs = KeyIndex()
        self.buckets = KeyIndex(np.uint32, np.int32)  # 32-bit band keys: a collision only adds a verified candidate
        self.bands, self.rows = lsh_bands(config.threshold, config.num_perm)
        self.signatures = SignatureFile(workdir / "minhash.sig", config.num_perm) if config.near else None

    def near_duplicates(self, sig: np.ndarray) -> np.ndarray:
        """For a chunk's signatures: which documents are near duplicates of an earlier one (this chunk included)."""
        n, base = len(sig), self.signatures.rows
        ids = base + np.arange(n, dtype=np.int64)
        self.signatures.append(sig)
        has_words = sig[:, 0] != np.iinfo(np.uint32).max
        keys = (band_keys(sig, self.bands, self.rows) >> np.uint64(32)).astype(np.uint32)  # [n, bands]
        flat = keys.reshape(-1)
        earlier = self.buckets.lookup(flat).reshape(n, self.bands)
        # within the chunk: the first document holding each key is the candidate of the later ones
        _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
        in_chunk = ids[first[inverse.reshape(-1)] // self.bands].reshape(n, self.bands)
        candidate = np.where(earlier >= 0, earlier, in_chunk)
        candidate = np.where((candidate < ids[:, None]) & has_words[:, None], candidate, -1)
        duplicate = np.zeros(n, dtype=bool)
        pairs = np.flatnonzero((candidate >= 0).any(axis=1))
        if len(pairs):
            cand = candidate[pairs]  # [m, bands]
            unique, where = np.unique(cand[cand >= 0], return_inverse=True)
            cand_sig = self.signatures.rows_at(unique)
            sim = np.zeros(cand.shape)
            sim[cand >= 0] = jaccard_estimate(sig[pairs].repeat((cand >= 0).sum(1), axis=0), cand_sig[where])
            duplicate[pairs] = sim.max(axis=1) >= self.config.threshold
        with_words = np.repeat(has_words, self.bands)
        self.buckets.add_new(flat[with_words], np.repeat(ids, self.bands)[with_words])
        return duplicate

    def filter(self, chunk: HashedDocuments) -> list[tuple[int, str]]:
        """The chunk's documents that survive, in order: (index in the chunk, text without repeated paragraphs)."""
        cfg = self.config
        keep = np.ones(len(chunk.texts), dtype=bool)
        if cfg.exact and len(keep):
            keep = self.documents.add_new(chunk.hashes)
            self.stats.exact_duplicates += int((~keep).sum())
        if cfg.near and keep.any():
            kept = np.flatnonzero(keep)
            near = self.near_duplicates(chunk.signatures[kept])
            keep[kept[near]] = False
            self.stats.near_duplicates += int(near.sum())
        self.stats.duplicate_chars += sum(len(chunk.texts[i]) for i in np.flatnonzero(~keep))
        texts = list(chunk.texts)
        if cfg.paragraphs and len(chunk.paragraph_hashes):
            self._drop_seen_paragraphs(chunk, keep, texts)
        return [(i, texts[i]) for i in np.flatnonzero(keep) if texts[i]]

    def _drop_seen_paragraphs(self, chunk: HashedDocuments, keep: np.ndarray, texts: list[str]) -> None:
        rows = keep[chunk.paragraph_doc]  # paragraphs of documents still kept
        doc, hashes = chunk.paragraph_doc[rows], chunk.paragraph_hashes[rows]
        index, seen = chunk.paragraph_index[rows], ~self.paragraphs.add_new(hashes)
        for d in np.unique(doc[seen]):
            gone = set(index[seen & (doc == d)].tolist())
            paragraphs = split_paragraphs(texts[d])
            self.stats.duplicate_paragraphs += len(gone)
            self.stats.duplicate_chars += sum(len(paragraphs[i]) for i in gone)
            texts[d] = "\n\n".join(p for i, p in enumerate(paragraphs) if i not in gone)

    def close(self) -> None:
        """Release the indexes and the signature file (the stats stay)."""
        if self.signatures is not None:
            self.signatures.close()
        self.documents, self.paragraphs, self.buckets = KeyIndex(), KeyIndex(), KeyIndex()
