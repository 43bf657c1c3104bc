"""The token store: packed rows in flat binary shards, written incrementally and read back by row with pread.

Layout of one split (``train/`` or ``val/``)::

    index.json              {"seq_length", "dtype", "rows", "shards": [{"tokens", "lengths", "rows"}]}
    shard-00000.tokens      rows x seq_length token ids (uint16 or uint32), row after row
    shard-00000.lengths     rows x uint32: real (non-pad) tokens per row

Rows are read with ``os.pread`` rather than a memory map, so a process streaming a store larger than RAM keeps only
the rows of the current batch: its resident memory does not grow with the pages it has read.
"""

import json
import os
from pathlib import Path

import numpy as np

SHARD_BYTES = 256 << 20  # start a new shard file after this many bytes of tokens


class ShardWriter:
    """Appends packed rows to the shards of one split."""

    def __init__(self, folder: Path, seq_length: int, dtype: np.dtype) -> None:
        self.folder, self.seq_length, self.dtype = folder, seq_length, np.dtype(dtype)
        self.shard_rows = max(1, SHARD_BYTES // (seq_length * self.dtype.itemsize))
        self.shards: list[dict] = []
        self.rows = 0
        self.tokens = 0
        self._files = None
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, rows: np.ndarray, lengths: np.ndarray) -> None:
        while len(rows):
            if self._files is None or self.shards[-1]["rows"] == self.shard_rows:
                self._open_next()
            room = self.shard_rows - self.shards[-1]["rows"]
            head, rows, head_len, lengths = rows[:room], rows[room:], lengths[:room], lengths[room:]
            self._files[0].write(np.ascontiguousarray(head, dtype=self.dtype).tobytes())
            self._files[1].write(np.asarray(head_len, dtype=np.uint32).tobytes())
            self.shards[-1]["rows"] += len(head)
            self.rows += len(head)
            self.tokens += int(np.sum(head_len))

    def _open_next(self) -> None:
        self._close_files()
        name = f"shard-{len(self.shards):05d}"
        self.shards.append({"tokens": f"{name}.tokens", "lengths": f"{name}.lengths", "rows": 0})
        self._files = (open(self.folder / f"{name}.tokens", "wb"), open(self.folder / f"{name}.lengths", "wb"))

    def _close_files(self) -> None:
        if self._files is not None:
            for f in self._files:
                f.close()
            self._files = None

    def close(self) -> None:
        self._close_files()
        index = {"seq_length": self.seq_length, "dtype": self.dtype.name, "rows": self.rows, "tokens": self.tokens,
                 "shards": self.shards}
        (self.folder / "index.json").write_text(json.dumps(index, indent=1))


class TokenStore:
    """Read access to one split's rows by global row number. Safe to pickle into DataLoader workers."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index = json.loads((self.folder / "index.json").read_text())
        self.seq_length, self.dtype = index["seq_length"], np.dtype(index["dtype"])
        self.shards = index["shards"]
        self.rows = index["rows"]
        self.offsets = np.cumsum([0] + [s["rows"] for s in self.shards])
        self._fds: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return self.rows

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": None}  # file descriptors are opened again in each process

    def _open(self) -> list[tuple[int, int]]:
        if self._fds is None:
            self._fds = [(os.open(self.folder / s["tokens"], os.O_RDONLY), os.open(self.folder / s["lengths"], os.O_RDONLY))
                         for s in self.shards]
        return self._fds

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``[len(rows), seq_length]`` and real-token counts of the given global row numbers."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"row out of range 0..{self.rows - 1}")
        fds = self._open()
        tokens = np.empty((len(rows), self.seq_length), dtype=self.dtype)
        lengths = np.empty(len(rows), dtype=np.uint32)
        row_bytes = self.seq_length * self.dtype.itemsize
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for i, (row, shard) in enumerate(zip(rows.tolist(), shard_of.tolist())):
            local = row - int(self.offsets[shard])
            token_fd, length_fd = fds[shard]
            os.preadv(token_fd, [memoryview(tokens[i]).cast("B")], local * row_bytes)
            os.preadv(length_fd, [memoryview(lengths[i : i + 1]).cast("B")], local * 4)
        return tokens, lengths

    def close(self) -> None:
        for fds in self._fds or []:
            for fd in fds:
                os.close(fd)
        self._fds = None
