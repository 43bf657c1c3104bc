import random
from collections import Counter

import numpy as np
import pytest

from lit_lm.data.dedup import DedupConfig, Deduplicator, KeyIndex, hash_documents
from lit_lm.data.minhash import band_keys, jaccard_estimate, lsh_bands, shingles, signatures
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


def sharing_a_prefix(tag: str, n_words: int, shared: int) -> tuple[str, str]:
    """Two documents of ``n_words`` distinct words each, equal in their first ``shared`` words only. Each has
    n_words - 4 five-word shingles; the shingles that lie inside the shared prefix, shared - 4 of them, are common, so
    their Jaccard similarity is exactly (shared - 4) / (2 (n_words - 4) - (shared - 4))."""
    first = [f"{tag}x{i}" for i in range(n_words)]
    second = first[:shared] + [f"{tag}y{i}" for i in range(n_words - shared)]
    return " ".join(first), " ".join(second)


def test_the_threshold_separates_pairs_just_above_and_just_below_it(tmp_path):
    """Pairs at Jaccard 0.85 and 0.75 on their shingles, around the default threshold of 0.8: the first pair's second
    document is dropped, the second pair's kept. A threshold moved to 0.7 (or to 0.9) turns one decision around.

    The MinHash estimate of a similarity J over k permutations is a mean of k indicators (two signatures equal at a
    permutation with probability J): sd = sqrt(J (1 - J) / k). At the default k = 128 that is 0.032 at 0.85 and 0.038
    at 0.75, too coarse to tell 0.05 apart; so the test takes k = 2048: sd 0.0079 at 0.85 and 0.0096 at 0.75, which
    puts each pair 0.05 / sd >= 5.2 sd away from 0.8 (and the 0.75 pair 5.2 sd away from 0.7). Before the estimate,
    LSH must make the 0.85 pair a candidate: lsh_bands(0.8, 2048) gives 113 bands of 18 rows, which miss a pair of
    similarity 0.85 with probability (1 - 0.85 ** 18) ** 113 = 0.002; it is asserted below rather than assumed."""
    config = DedupConfig(exact=False, paragraphs=False, num_perm=2048)
    above, below = sharing_a_prefix("a", 374, 344), sharing_a_prefix("b", 704, 604)  # 340 / 400, 600 / 800
    for pair, true in ((above, 0.85), (below, 0.75)):
        values, doc = shingles(list(pair), config.ngram)
        first, second = set(values[doc == 0].tolist()), set(values[doc == 1].tolist())
        assert len(first & second) / len(first | second) == true
        sig = signatures(list(pair), config.num_perm, config.ngram)
        sd = (true * (1 - true) / config.num_perm) ** 0.5
        assert abs(jaccard_estimate(sig[0], sig[1]) - true) <= 4 * sd  # the estimate behaves as the sd says
    bands, rows = lsh_bands(config.threshold, config.num_perm)
    keys = band_keys(signatures(list(above), config.num_perm, config.ngram), bands, rows)
    assert (keys[0] == keys[1]).any()  # the 0.85 pair is an LSH candidate
    kept, stats = dedup([*above, *below], tmp_path, exact=False, paragraphs=False, num_perm=2048)
    assert [i for i, _ in kept] == [0, 2, 3] and stats.near_duplicates == 1


def test_key_index_keeps_64_bit_keys_exact():
    """Document hashes use all 64 bits: two that differ only in the lowest one are different documents (a float64
    key would merge them: its mantissa holds 53 bits)."""
    index = KeyIndex()
    big = 2**60
    assert index.add_new(np.array([big, big + 1, big])).tolist() == [True, True, False]
    assert index.lookup(np.array([big + 1, big + 2, big])).tolist() == [0, -1, 0]  # a set: 0 for present keys
    only_big = KeyIndex()
    only_big.add_new(np.array([big]))
    assert only_big.lookup(np.array([big + 1])).tolist() == [-1]


def test_hashing_computes_signatures_only_for_near_deduplication():
    """HashedDocuments.signatures: None without near deduplication (and for an empty chunk), else one row per
    document."""
    docs = ["one two three four five six", "seven eight nine ten eleven twelve"]
    assert hash_documents(docs, DedupConfig(near=False)).signatures is None
    assert hash_documents([], DedupConfig()).signatures is None
    assert hash_documents(docs, DedupConfig(num_perm=16)).signatures.shape == (2, 16)


def paragraph(tag: str, chars: int) -> str:
    """A paragraph of exactly ``chars`` characters whose words all start with ``tag``."""
    text = " ".join(f"{tag}{i}" for i in range(chars))[:chars]
    return text.rstrip() + "x" * (chars - len(text.rstrip()))


def test_paragraph_min_chars_is_the_shortest_paragraph_that_can_be_dropped(tmp_path):
    """'Paragraphs shorter than this are never dropped': one of exactly paragraph_min_chars characters is."""
    at, below = paragraph("a", 60), paragraph("b", 59)
    assert (len(at), len(below)) == (60, 59)
    docs = [f"first\n\n{at}\n\n{below}", f"second\n\n{at}\n\n{below}"]
    kept, stats = dedup(docs, tmp_path, near=False, paragraph_min_chars=60)
    assert [t for _, t in kept] == [docs[0], f"second\n\n{below}"]
    assert stats.duplicate_paragraphs == 1


def test_seen_paragraphs_are_cut_from_each_later_document_and_counted_in_chars(tmp_path):
    """Three documents in one chunk, paragraphs of 120 characters: the second repeats P1, the third P2 and P3. Each
    later document loses exactly its repeated paragraphs; the stats count 3 paragraphs and their characters, plus the
    characters of a whole duplicate document."""
    p = {i: paragraph(f"p{i}w", 120) for i in range(1, 6)}
    docs = [f"{p[1]}\n\n{p[2]}", f"{p[3]}\n\n{p[1]}\n\n{p[4]}", f"{p[2]}\n\n{p[5]}\n\n{p[3]}", f"{p[1]}\n\n{p[2]}"]
    kept, stats = dedup(docs, tmp_path, near=False, paragraph_min_chars=100)
    assert kept == [(0, docs[0]), (1, f"{p[3]}\n\n{p[4]}"), (2, p[5])]
    assert stats.exact_duplicates == 1 and stats.duplicate_paragraphs == 3
    assert stats.duplicate_chars == 3 * 120 + len(docs[3])


def test_the_paragraphs_of_a_dropped_document_do_not_count_as_seen(tmp_path):
    """The second document repeats the first word for word (an exact duplicate, dropped) but splits it into other
    paragraphs; its paragraph "B C" was never kept, so the third document keeps it."""
    a, b, c, z = (paragraph(tag, 50) for tag in "abcz")
    docs = [f"{a} {b}\n\n{c}", f"{a}\n\n{b} {c}", f"{z}\n\n{b} {c}"]
    kept, stats = dedup(docs, tmp_path, near=False, paragraph_min_chars=40)
    assert kept == [(0, docs[0]), (2, docs[2])]
    assert stats.exact_duplicates == 1 and stats.duplicate_paragraphs == 0
    assert stats.duplicate_chars == len(docs[1])


def test_exact_false_keeps_exact_duplicates(tmp_path):
    docs = ["The cat sat on the mat.", "the cat sat on the mat", "A dog."]
    kept, stats = dedup(docs, tmp_path, exact=False, near=False, paragraphs=False)
    assert [i for i, _ in kept] == [0, 1, 2] and stats.exact_duplicates == 0 and stats.duplicate_chars == 0


def test_a_threshold_of_one_drops_identical_documents(tmp_path):
    """'at or above which': identical documents have an estimated Jaccard similarity of exactly 1.0 (every MinHash
    equal), so threshold 1.0 still finds them."""
    rng = random.Random(3)
    doc = random_doc(rng)
    kept, stats = dedup([doc, doc, random_doc(rng)], tmp_path, exact=False, threshold=1.0)
    assert [i for i, _ in kept] == [0, 2] and stats.near_duplicates == 1


def test_each_document_is_judged_on_its_own_candidates(tmp_path):
    """One chunk with a near-duplicate pair (Jaccard 96/104 = 0.92 on their shingles, ``sharing_a_prefix``) and a
    pair that LSH makes candidates although their similarity, 70/130 = 0.54, is far below the threshold 0.8: at the
    default 128 permutations the estimate's sd is sqrt(0.54 * 0.46 / 128) = 0.044, so 0.8 lies 5.9 sd away. Only the
    near duplicate is dropped: each document is judged on its own best candidate."""
    config = DedupConfig(exact=False, paragraphs=False)
    close, far = sharing_a_prefix("a", 104, 100), sharing_a_prefix("l", 104, 74)
    bands, rows = lsh_bands(config.threshold, config.num_perm)
    keys = band_keys(signatures(list(far), config.num_perm, config.ngram), bands, rows)
    assert (keys[0] == keys[1]).any()  # the distant pair is a candidate: asserted, not assumed
    kept, stats = dedup([*far, *close], tmp_path, exact=False, paragraphs=False)
    assert [i for i, _ in kept] == [0, 1, 2] and stats.near_duplicates == 1


@pytest.mark.parametrize("settings", [dict(threshold=1.0), dict(num_perm=8), dict(ngram=1),
                                      dict(paragraph_min_chars=0), dict(threshold=1e-9)])
def test_dedup_settings_at_their_bounds_are_allowed(settings):
    DedupConfig(**settings)


@pytest.mark.parametrize("settings, message", [
    (dict(threshold=0.0), r"data.dedup.threshold must be in \(0, 1\], got 0.0"),
    (dict(threshold=1.5), r"data.dedup.threshold must be in \(0, 1\], got 1.5"),
    (dict(num_perm=7), r"data.dedup.num_perm must be >= 8, data.dedup.ngram >= 1, paragraph_min_chars >= 0"),
    (dict(ngram=0), r"data.dedup.num_perm must be >= 8, data.dedup.ngram >= 1"),
    (dict(paragraph_min_chars=-1), r"paragraph_min_chars >= 0"),
])
def test_dedup_settings_out_of_range_are_refused_naming_the_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        DedupConfig(**settings)


def test_duplicate_chars_add_up_over_chunks(tmp_path):
    docs = ["The same text, again.", "the same text again", "The same text again!"]
    kept, stats = dedup(docs, tmp_path, chunk_size=1, near=False)
    assert [i for i, _ in kept] == [0] and stats.duplicate_chars == len(docs[1]) + len(docs[2])
