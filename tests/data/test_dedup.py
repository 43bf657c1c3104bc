import random
from collections import Counter

import numpy as np

from lit_lm.data.dedup import DedupConfig, Deduplicator, KeyIndex, hash_documents
from lit_lm.data.minhash import jaccard_estimate, lsh_bands, shingles, signatures
from lit_lm.data.text import decode, split_documents
from tests.conftest import shared_data

WORDS = [f"w{i}" for i in range(3000)]


def dedup(docs, tmp_path, chunk_size=None, **config):
    """Run the deduplicator over docs in chunks; return the surviving (index, text) pairs and the stats."""
    config = DedupConfig(**config)
    deduplicator = Deduplicator(config, tmp_path)
    chunk_size = chunk_size or len(docs)
    kept = []
    for start in range(0, len(docs), chunk_size):
        kept += [(start + i, t) for i, t in deduplicator.filter(hash_documents(docs[start : start + chunk_size], config))]
    deduplicator.close()
    return kept, deduplicator.stats


def random_doc(rng, n=200):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def edited(rng, doc, fraction):
    words = doc.split()
    for i in rng.sample(range(len(words)), int(fraction * len(words))):
        words[i] = rng.choice(WORDS)
    return " ".join(words)


def test_key_index_agrees_with_a_python_dict(monkeypatch):
    monkeypatch.setattr(KeyIndex, "MAX_RUN", 128)  # runs stop merging at this size
    rng = np.random.default_rng(0)
    index, seen = KeyIndex(np.int64, np.int64), set()
    for _ in range(30):
        keys = rng.integers(0, 500, rng.integers(1, 60))
        new = index.add_new(keys, keys * 10)
        expected = []
        for k in keys.tolist():
            expected.append(k not in seen)
            seen.add(k)
        assert new.tolist() == expected
    assert len(index) == len(seen) and 3 <= len(index.runs) < 12 and all(len(k) <= 128 for k, _ in index.runs)
    assert index.lookup(np.array([sorted(seen)[0], 10_000])).tolist() == [sorted(seen)[0] * 10, -1]
    assert KeyIndex().add_new(np.array([5, 5, 6])).tolist() == [True, False, True]  # a set without values


def test_exact_duplicates_ignore_case_whitespace_and_punctuation_but_not_order(tmp_path):
    docs = ["The cat sat.", "the  cat\nsat.", "A different one.", "The cat sat!", "sat the cat.", "***", "***", "---"]
    kept, stats = dedup(docs, tmp_path, chunk_size=2, near=False)
    assert [i for i, _ in kept] == [0, 2, 4, 5, 7]
    assert stats.exact_duplicates == 3


def test_repeated_paragraphs_are_removed_inside_documents(tmp_path):
    boilerplate = "This licence text is repeated in every single file of the corpus, word for word, at the end."
    docs = [f"Story one begins here.\n\n{boilerplate}", f"Story two is another tale.\n\n{boilerplate}\n\nShort.\n\nShort."]
    kept, stats = dedup(docs, tmp_path, chunk_size=1, near=False, paragraph_min_chars=50)
    assert [t for _, t in kept] == [docs[0], "Story two is another tale.\n\nShort.\n\nShort."]  # short lines stay
    assert stats.duplicate_paragraphs == 1


def test_near_duplicates_are_found_and_different_documents_kept(tmp_path):
    rng = random.Random(0)
    originals = [random_doc(rng) for _ in range(20)]
    near = [edited(rng, d, 0.01) for d in originals[:10]]     # 1% of words changed: Jaccard ~0.9
    distant = [edited(rng, d, 0.4) for d in originals[10:]]   # 40% changed: Jaccard ~0.1
    docs = originals + near + distant
    kept, stats = dedup(docs, tmp_path, chunk_size=7, exact=False)
    assert stats.near_duplicates == 10
    assert {i for i, _ in kept} == set(range(20)) | set(range(30, 40))


def test_near_duplicates_within_one_chunk(tmp_path):
    rng = random.Random(1)
    doc = random_doc(rng)
    kept, stats = dedup([doc, edited(rng, doc, 0.01), "", "too short"], tmp_path, exact=False)
    assert stats.near_duplicates == 1 and [i for i, _ in kept] == [0, 3]


def test_minhash_estimates_jaccard_similarity():
    rng = random.Random(2)
    errors = []
    for _ in range(40):
        a = random_doc(rng, 300)
        b = edited(rng, a, rng.random() * 0.5)
        values, doc = shingles([a, b], 5)
        sa, sb = set(values[doc == 0].tolist()), set(values[doc == 1].tolist())
        true = len(sa & sb) / len(sa | sb)
        sig = signatures([a, b], num_perm=128)
        errors.append(jaccard_estimate(sig[0], sig[1]) - true)
    assert abs(np.mean(errors)) < 0.02 and np.std(errors) < 0.06


def test_documents_shorter_than_a_shingle_still_get_signatures():
    sig = signatures(["one two", "one two", "three", ""], num_perm=16, ngram=5)
    assert (sig[0] == sig[1]).all() and not (sig[0] == sig[2]).all()
    assert (sig[3] == np.iinfo(np.uint32).max).all()
    assert (signatures(["lonely"], num_perm=16)[0] == sig[2]).all() == False  # noqa: E712 - one word alone works
    assert (signatures(["three"], num_perm=16)[0] == sig[2]).all()


def test_lsh_bands_fit_the_signature_and_move_with_the_threshold():
    for threshold in (0.5, 0.8, 0.9):
        bands, rows = lsh_bands(threshold, 128)
        assert bands * rows <= 128
        assert abs((1 / bands) ** (1 / rows) - threshold) < 0.1  # the S-curve's midpoint sits near the threshold


def test_gutenberg_licence_boilerplate_is_found(tmp_path):
    folder = shared_data("gutenberg")
    books = sorted(folder.glob("*.txt"), key=lambda p: p.stat().st_size)[:6]  # the smallest few: fast
    paragraphs, book_of = [], []
    for b, path in enumerate(books):
        for p in split_documents(decode(path.read_bytes()).text, "paragraph"):
            paragraphs.append(p)
            book_of.append(b)
    kept, stats = dedup(paragraphs, tmp_path, chunk_size=300)
    assert stats.exact_duplicates > 100 and stats.near_duplicates > 0
    before = Counter(b for b, p in zip(book_of, paragraphs) if "Gutenberg" in p)
    after = Counter(book_of[i] for i, p in kept if "Gutenberg" in p)
    first = min(before)
    assert after[first] >= 0.9 * before[first]  # the first copy of the licence stays
    for book in before:
        if book != first and before[book] > 10:  # later books lose their licence: only title lines remain
            assert after[book] < 0.25 * before[book], (book, before[book], after[book])
    # with whole books as documents, the licence paragraphs are cut out of every book after the first
    whole_books = [decode(p.read_bytes()).text.strip() for p in books]
    kept, stats = dedup(whole_books, tmp_path)
    assert stats.duplicate_paragraphs > 100 and len(kept) == len(books)
    assert sum("Section 2. Information about the Mission" in t for _, t in kept) <= 1
