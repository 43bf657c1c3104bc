"""Packing tokenized documents into fixed-length training rows, a batch of documents at a time."""

from collections.abc import Iterable

import numpy as np


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every token id."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


class Packer:
    """Concatenates documents, a separator after each, and cuts the stream into rows of `seq_length`.

    Every row starts with `row_start` when given ([CLS] for BERT, <s> for RoBERTa; GPT rows start with text).
    With `cross_documents` (encoders; cramming packs this way) a document continues in the next row. Without it
    (an option for decoders) a row holds whole documents only: a document that does not fit the rest of a row starts a
    new one, the rest padded; a document longer than a row fills rows of its own. Each row's count of real tokens is
    kept, so padding is known even when the pad token is also the separator (GPT-2's <|endoftext|>).
    """

    def __init__(self, seq_length: int, separator: int, pad: int, dtype: np.dtype, row_start: int | None = None,
                 cross_documents: bool = True) -> None:
        body = seq_length - (row_start is not None)
        if body < 1:
            raise ValueError(f"data.seq_length must be at least 2, got {seq_length}.")
        self.seq_length, self.body, self.separator, self.pad = seq_length, body, separator, pad
        self.dtype, self.row_start, self.cross_documents = dtype, row_start, cross_documents
        self.carry = np.zeros(0, dtype=dtype)

    def add(self, documents: Iterable[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``[n, seq_length]`` completed by these documents, and each row's number of real tokens."""
        if self.cross_documents:
            pieces = [self.carry]
            for doc in documents:
                pieces += [np.asarray(doc, dtype=self.dtype), np.asarray([self.separator], dtype=self.dtype)]
            stream = np.concatenate(pieces)
            n = len(stream) // self.body
            self.carry = stream[n * self.body :]
            return self._rows(stream[: n * self.body].reshape(n, self.body), np.full(n, self.body))
        bodies = []
        for doc in documents:
            tokens = np.append(np.asarray(doc, dtype=self.dtype), self.dtype.type(self.separator))
            if len(self.carry) + len(tokens) > self.body:  # does not fit the open row: close it
                if len(self.carry):
                    bodies.append(self.carry)
                    self.carry = np.zeros(0, dtype=self.dtype)
                while len(tokens) > self.body:  # a long document fills rows of its own
                    bodies.append(tokens[: self.body])
                    tokens = tokens[self.body :]
            self.carry = np.concatenate([self.carry, tokens])
        return self._padded(bodies)

    def finish(self, pad_last: bool) -> tuple[np.ndarray, np.ndarray]:
        """The rows left: the open partial row, padded, with `pad_last` (or always without `cross_documents`)."""
        carry, self.carry = self.carry, np.zeros(0, dtype=self.dtype)
        return self._padded([carry] if len(carry) and (pad_last or not self.cross_documents) else [])

    def _padded(self, bodies: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = np.full((len(bodies), self.body), self.pad, dtype=self.dtype)
        for row, body in zip(out, bodies):
            row[: len(body)] = body
        return self._rows(out, np.array([len(b) for b in bodies], dtype=np.int64))

    def _rows(self, bodies: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.row_start is None:
            return bodies, lengths.astype(np.int64)
        rows = np.empty((len(bodies), self.seq_length), dtype=self.dtype)
        rows[:, 0] = self.row_start
        rows[:, 1:] = bodies
        return rows, lengths.astype(np.int64) + 1


def pack(documents: Iterable[list[int]], seq_length: int, separator: int, pad: int, dtype: np.dtype,
         row_start: int | None = None, cross_documents: bool = True, pad_last: bool = False) -> np.ndarray:
    """All rows of a small set of documents at once (see `Packer`)."""
    packer = Packer(seq_length, separator, pad, dtype, row_start, cross_documents)
    rows, _ = packer.add(documents)
    tail, _ = packer.finish(pad_last)
    return np.concatenate([rows, tail])
