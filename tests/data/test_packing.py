import numpy as np
import pytest

from lit_lm.data.packing import pack, token_dtype

CLS, SEP, PAD = 2, 3, 0


def test_rows_start_with_cls_and_documents_end_with_sep():
    docs = [[10, 11, 12], [20, 21], [30, 31, 32, 33]]
    rows = pack(docs, seq_length=4, cls_id=CLS, sep_id=SEP, pad_id=PAD, dtype=np.dtype(np.uint16))
    # stream: 10 11 12 SEP 20 21 SEP 30 31 32 33 SEP -> 12 tokens -> 4 rows of 3 (+CLS)
    assert rows.tolist() == [[2, 10, 11, 12], [2, 3, 20, 21], [2, 3, 30, 31], [2, 32, 33, 3]]
    assert rows.dtype == np.uint16


def test_tail_is_dropped_or_padded():
    docs = [[10, 11, 12, 13, 14]]  # stream of 6 tokens, rows hold 3 + CLS
    dropped = pack(docs, 4, CLS, SEP, PAD, np.dtype(np.uint16))
    assert dropped.tolist() == [[2, 10, 11, 12], [2, 13, 14, 3]]
    docs = [[10, 11, 12, 13]]  # stream of 5
    assert pack(docs, 4, CLS, SEP, PAD, np.dtype(np.uint16)).tolist() == [[2, 10, 11, 12]]
    padded = pack(docs, 4, CLS, SEP, PAD, np.dtype(np.uint16), pad_last=True)
    assert padded.tolist() == [[2, 10, 11, 12], [2, 13, 3, 0]]


def test_every_token_survives_packing_in_order():
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, 5000, rng.integers(1, 300)).tolist() for _ in range(50)]
    rows = pack(docs, 64, CLS, SEP, PAD, np.dtype(np.uint16), pad_last=True)
    stream = rows[:, 1:].reshape(-1)
    expected = np.concatenate([np.append(d, SEP) for d in docs])
    assert np.array_equal(stream[: len(expected)], expected)
    assert (stream[len(expected):] == PAD).all()


def test_token_dtype_widens_for_large_vocabularies():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_too_short_rows_are_rejected():
    with pytest.raises(ValueError, match="seq_length"):
        pack([[1]], 1, CLS, SEP, PAD, np.dtype(np.uint16))
