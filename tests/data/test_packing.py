import numpy as np
import pytest

from lit_lm.data.packing import Packer, pack, token_dtype

CLS, SEP, PAD = 2, 3, 0
U16 = np.dtype(np.uint16)


def test_rows_start_with_cls_and_documents_end_with_sep():
    docs = [[10, 11, 12], [20, 21], [30, 31, 32, 33]]
    rows = pack(docs, 4, SEP, PAD, U16, row_start=CLS)
    # stream: 10 11 12 SEP 20 21 SEP 30 31 32 33 SEP -> 12 tokens -> 4 rows of 3 (+CLS)
    assert rows.tolist() == [[2, 10, 11, 12], [2, 3, 20, 21], [2, 3, 30, 31], [2, 32, 33, 3]]
    assert rows.dtype == np.uint16


def test_decoder_rows_have_no_row_start():
    rows = pack([[10, 11, 12], [20]], 3, SEP, PAD, U16)
    assert rows.tolist() == [[10, 11, 12], [3, 20, 3]]


def test_tail_is_dropped_or_padded():
    docs = [[10, 11, 12, 13]]  # stream of 5, rows hold 3 + CLS
    assert pack(docs, 4, SEP, PAD, U16, row_start=CLS).tolist() == [[2, 10, 11, 12]]
    padded = pack(docs, 4, SEP, PAD, U16, row_start=CLS, pad_last=True)
    assert padded.tolist() == [[2, 10, 11, 12], [2, 13, 3, 0]]


def test_every_token_survives_streaming_packing_in_order():
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, 5000, rng.integers(1, 300)).tolist() for _ in range(50)]
    packer = Packer(64, SEP, PAD, U16, row_start=CLS)
    parts = [packer.add(docs[i : i + 7]) for i in range(0, 50, 7)] + [packer.finish(pad_last=True)]
    rows = np.concatenate([r for r, _ in parts])
    lengths = np.concatenate([n for _, n in parts])
    stream = rows[:, 1:].reshape(-1)
    expected = np.concatenate([np.append(d, SEP) for d in docs])
    assert np.array_equal(stream[: len(expected)], expected)
    assert (stream[len(expected):] == PAD).all()
    assert (lengths[:-1] == 64).all() and lengths[-1] == 1 + len(expected) - 63 * (len(rows) - 1)


def test_rows_never_cross_a_document_boundary_when_asked():
    docs = [[10, 11], [20, 21, 22], [30] * 9, [40]]
    packer = Packer(5, SEP, PAD, U16, row_start=CLS, cross_documents=False)  # bodies of 4
    rows, lengths = packer.add(docs)
    tail, tail_lengths = packer.finish(pad_last=False)
    rows, lengths = np.concatenate([rows, tail]), np.concatenate([lengths, tail_lengths])
    assert rows.tolist() == [
        [2, 10, 11, 3, 0],        # [20 21 22 SEP] does not fit after [10 11 SEP]: new row, rest padded
        [2, 20, 21, 22, 3],
        [2, 30, 30, 30, 30],      # a document longer than a row fills rows of its own
        [2, 30, 30, 30, 30],
        [2, 30, 3, 40, 3],
    ]
    assert lengths.tolist() == [4, 5, 5, 5, 5]


def test_token_dtype_widens_for_large_vocabularies():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_too_short_rows_are_rejected():
    with pytest.raises(ValueError, match="seq_length"):
        Packer(1, SEP, PAD, U16, row_start=CLS)


def test_documents_stay_whole_through_pack_too():
    """``pack`` passes ``cross_documents`` on: without it each row holds whole documents (the rows worked out by hand
    from the rule in Packer's docstring: [20 21 SEP] does not fit after [10 11 SEP] in a body of 4, so it opens a new
    row and the first one is padded)."""
    rows = pack([[10, 11], [20, 21], [30]], 5, SEP, PAD, U16, row_start=CLS, cross_documents=False)
    assert rows.tolist() == [[2, 10, 11, 3, 0], [2, 20, 21, 3, 0], [2, 30, 3, 0, 0]]


def test_rows_of_two_hold_a_row_start_and_one_token():
    """seq_length 2 with a row start leaves a body of one token: the smallest row there is, allowed."""
    rows = pack([[10], [20]], 2, SEP, PAD, U16, row_start=CLS)
    assert rows.tolist() == [[2, 10], [2, 3], [2, 20], [2, 3]]


@pytest.mark.parametrize("row_start", [None, CLS], ids=["no-row-start", "row-start"])
@pytest.mark.parametrize("cross_documents", [True, False], ids=["across", "whole-documents"])
def test_rows_keep_the_token_dtype_and_lengths_are_int64_on_every_path(row_start, cross_documents):
    """The store writes rows as they come: a row in int64 or float64 would quadruple (or worse) a uint16 shard. Every
    path (adding, the padded tail, adding again after ``finish``) gives rows of the packer's dtype and int64 lengths."""
    packer = Packer(5, SEP, PAD, U16, row_start=row_start, cross_documents=cross_documents)
    parts = [packer.add([[10, 11], [20, 21, 22]]), packer.add([[30] * 7]), packer.finish(pad_last=True),
             packer.add([[40, 41, 42, 43, 44, 45]]), packer.finish(pad_last=True)]
    for rows, lengths in parts:
        assert rows.dtype == np.uint16 and lengths.dtype == np.int64
    assert sum(len(rows) for rows, _ in parts) > 0


def test_a_packer_starts_from_an_empty_row_after_finish():
    packer = Packer(4, SEP, PAD, U16)  # no row start: bodies of 4
    assert packer.add([[10, 11, 12], [20]])[0].tolist() == [[10, 11, 12, 3]]
    tail, tail_lengths = packer.finish(pad_last=True)
    assert tail.tolist() == [[20, 3, 0, 0]] and tail_lengths.tolist() == [2]
    rows, lengths = packer.add([[30, 31, 32]])
    assert rows.tolist() == [[30, 31, 32, 3]] and lengths.tolist() == [4]  # nothing left over from before
    assert packer.finish(pad_last=True)[0].tolist() == []
