"""Vectorised MinHash signatures and LSH band keys (Broder 1997; Leskovec, Rajaraman & Ullman, MMDS ch. 3).

A whole chunk of documents is hashed at once with numpy: words are hashed by a polynomial rolling hash over the
UTF-8 bytes, word n-grams ("shingles") combine consecutive word hashes, and each of the `num_perm` hash functions
maps every shingle before a per-document minimum. No Python loop runs per word or per shingle.
"""

import math
from functools import lru_cache

import numpy as np

_U64 = np.uint64
_WORD_BYTE = np.ones(256, dtype=bool)  # non-ASCII bytes (UTF-8 letters) belong to words; ASCII only if alphanumeric
_WORD_BYTE[:128] = [chr(i).isalnum() for i in range(128)]
_POLY = 0x100000001B3  # an odd multiplier for the rolling byte hash (the FNV-64 prime)
SHINGLE_BLOCK = 16384  # shingles hashed per numpy pass: bounds the [shingles, num_perm] temporary to a few MB


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the whole word (Steele et al. 2014)."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


@lru_cache(maxsize=4)
def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Random odd multipliers and xor masks of the `num_perm` hash functions h(x) = mix((x ^ s) * a)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**32, num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    s = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)
    return a, s


def _powers(n: int, base: int) -> np.ndarray:
    """base**0, base**1, ... base**(n-1), wrapping modulo 2**64."""
    factors = np.full(n, base, dtype=_U64)
    factors[:1] = 1
    return np.cumprod(factors, dtype=_U64)


def word_hashes(docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The hash of every word of every document (lower-cased; words are runs of letters and digits), and each
    word's document index."""
    encoded = [d.lower().encode("utf-8") for d in docs]
    data = np.frombuffer(b" ".join(encoded) + b" ", dtype=np.uint8)  # a space between documents ends their words
    starts_of_docs = np.cumsum([0] + [len(e) + 1 for e in encoded[:-1]])
    is_word = _WORD_BYTE[data]
    edges = np.diff(is_word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    word_start, word_end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    # polynomial hash of bytes[s:e] = (prefix[e] - prefix[s]) * p^-s, all in wrapping uint64 arithmetic
    n = len(data)
    powers, inverse = _powers(n, _POLY), _powers(n, pow(_POLY, -1, 2**64))
    prefix = np.concatenate([[_U64(0)], np.cumsum(data.astype(_U64) * powers, dtype=_U64)])
    hashes = mix64((prefix[word_end] - prefix[word_start]) * inverse[word_start])
    doc_of_word = np.searchsorted(starts_of_docs, word_start, side="right") - 1
    return hashes, doc_of_word


def document_hashes(words: np.ndarray, doc: np.ndarray, n_docs: int) -> np.ndarray:
    """An order-sensitive 64-bit hash of each document's word sequence, so case, whitespace and punctuation are
    folded; 0 for a document without words."""
    counts = np.bincount(doc, minlength=n_docs)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.zeros(n_docs, dtype=_U64)
    if len(words):
        position = np.arange(len(words)) - first[doc]
        terms = words * _powers(int(position.max()) + 1, _POLY)[position]
        nonempty = np.flatnonzero(counts)
        out[nonempty] = mix64(np.add.reduceat(terms, first[nonempty]) ^ counts[nonempty].astype(_U64))
    return out


def shingles(docs: list[str], ngram: int, words: tuple[np.ndarray, np.ndarray] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every word n-gram of every document, and each shingle's document index (ascending).

    A document with fewer than `ngram` words gets one shingle of all its words; one without words gets none.
    `words` may pass in `word_hashes(docs)` when already computed.
    """
    words, doc = word_hashes(docs) if words is None else words
    n = len(words)
    acc = np.zeros(n, dtype=_U64)
    full = np.ones(n, dtype=bool)
    rng = np.random.default_rng(ngram)
    for k in range(ngram):
        coef = _U64(int(rng.integers(1, 2**63)) * 2 + 1)
        m = max(n - k, 0)  # positions whose k-th next word exists
        same = np.zeros(n, dtype=bool)
        same[:m] = doc[k:] == doc[:m]
        shifted = np.zeros(n, dtype=_U64)
        shifted[:m] = words[k:]
        acc += np.where(same, shifted * coef, _U64(0))
        full &= same
    first_of_doc = np.ones(n, dtype=bool)
    first_of_doc[1:] = doc[1:] != doc[:-1]
    counts = np.bincount(doc, minlength=len(docs))
    short_doc = counts[doc] < ngram
    keep = full | (first_of_doc & short_doc)
    return (mix64(acc[keep]) >> _U64(32)).astype(np.uint32), doc[keep]


def signatures(docs: list[str], num_perm: int = 128, ngram: int = 5,
               words: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """MinHash signatures ``[len(docs), num_perm]`` (uint32); a document without words gets all 0xFFFFFFFF."""
    values, doc = shingles(docs, ngram, words)
    a, s = permutations(num_perm)
    sig = np.full((num_perm, len(docs)), np.iinfo(np.uint32).max, dtype=np.uint32)  # transposed: contiguous minima
    for start in range(0, len(values), SHINGLE_BLOCK):
        x, d = values[start : start + SHINGLE_BLOCK], doc[start : start + SHINGLE_BLOCK]
        h = (x[None, :] ^ s[:, None]) * a[:, None]
        h ^= h >> np.uint32(15)
        bounds = np.flatnonzero(np.diff(d, prepend=-1))  # first shingle of each document in this block
        touched = d[bounds]
        sig[:, touched] = np.minimum(sig[:, touched], np.minimum.reduceat(h, bounds, axis=1))
    return np.ascontiguousarray(sig.T)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band of `rows` signature values: ``[n, bands]``; documents sharing a key are candidates."""
    n = len(sig)
    keys = np.empty((n, bands), dtype=_U64)
    for b in range(bands):
        acc = np.full(n, ((b + 1) * 0x9E3779B97F4A7C15) % 2**64, dtype=_U64)
        for r in range(rows):
            acc = mix64(acc ^ sig[:, b * rows + r].astype(_U64))
        keys[:, b] = acc
    return keys


def lsh_bands(threshold: float, num_perm: int, false_negative_weight: float = 0.9) -> tuple[int, int]:
    """The (bands, rows) with bands * rows <= num_perm that minimise weighted false positives + false negatives around
    `threshold`, for the collision probability 1 - (1 - s^rows)^bands of two documents of Jaccard similarity s.

    Missed pairs are weighted up: every candidate pair is verified on its signatures afterwards, so a false positive
    costs only a comparison while a false negative is a duplicate left in the data.
    """
    s = np.linspace(0.0, 1.0, 201)
    best, best_err = (1, num_perm), math.inf
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        p = 1 - (1 - s**rows) ** bands
        below = s <= threshold
        err = ((1 - false_negative_weight) * np.trapezoid(np.where(below, p, 0), s)
               + false_negative_weight * np.trapezoid(np.where(below, 0, 1 - p), s))
        if err < best_err:
            best, best_err = (bands, rows), err
    return best


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of signature rows: the fraction of equal values."""
    return (a == b).mean(axis=-1)
