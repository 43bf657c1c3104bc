"""Packing tokenized documents into fixed-length training sequences."""

from collections.abc import Iterable

import numpy as np


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every token id."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def pack(
    documents: Iterable[list[int]], seq_length: int, cls_id: int, sep_id: int, pad_id: int, dtype: np.dtype,
    pad_last: bool = False,
) -> np.ndarray:
    """Concatenate documents with a separator after each and cut the stream into rows of ``seq_length``.

    Every row starts with the classification token, as BERT's inputs do, so each row carries ``seq_length - 1``
    tokens of the stream; a document longer than a row simply continues in the next. The tail that does not
    fill a row is dropped, or, with ``pad_last``, padded into one last row (for small validation sets).
    """
    if seq_length < 2:
        raise ValueError(f"data.seq_length must be at least 2, got {seq_length}.")
    body = seq_length - 1
    pieces = []
    for doc in documents:
        pieces.append(np.asarray(doc, dtype=dtype))
        pieces.append(np.asarray([sep_id], dtype=dtype))
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    rows, rest = divmod(len(stream), body)
    if pad_last and rest:
        stream = np.concatenate([stream, np.full(body - rest, pad_id, dtype=dtype)])
        rows += 1
    packed = np.empty((rows, seq_length), dtype=dtype)
    packed[:, 0] = cls_id
    packed[:, 1:] = stream[: rows * body].reshape(rows, body)
    return packed
