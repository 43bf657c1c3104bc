import pickle

import numpy as np
import pytest

from lit_lm.data import store as store_module
from lit_lm.data.store import ShardWriter, TokenStore


def write_store(folder, n_rows, seq_length=8, shard_bytes=None, monkeypatch=None):
    """A store whose row i holds i in every position (so a row names itself), lengths i % seq_length + 1."""
    if shard_bytes:
        monkeypatch.setattr(store_module, "SHARD_BYTES", shard_bytes)
    writer = ShardWriter(folder, seq_length, np.dtype(np.uint32))
    for start in range(0, n_rows, 37):  # written in uneven pieces
        idx = np.arange(start, min(n_rows, start + 37))
        writer.write(np.repeat(idx[:, None], seq_length, axis=1), idx % seq_length + 1)
    writer.close()
    return TokenStore(folder)


def test_rows_come_back_across_shards(tmp_path, monkeypatch):
    store = write_store(tmp_path / "s", 500, shard_bytes=8 * 4 * 64, monkeypatch=monkeypatch)  # 64 rows per shard
    assert len(store.shards) == 8 and len(store) == 500
    rows = np.array([0, 63, 64, 499, 250, 250])
    tokens, lengths = store.read(rows)
    assert (tokens == rows[:, None]).all() and lengths.tolist() == (rows % 8 + 1).tolist()
    with pytest.raises(IndexError):
        store.read(np.array([500]))


def test_a_store_pickles_into_worker_processes(tmp_path):
    store = write_store(tmp_path / "s", 50)
    store.read(np.array([1]))  # opens file descriptors
    copy = pickle.loads(pickle.dumps(store))
    assert copy._fds is None and copy.read(np.array([7]))[0][0, 0] == 7
