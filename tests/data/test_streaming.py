import numpy as np
import pytest
from torch.utils.data import DataLoader

from lit_lm.data.streaming import ExactlyOnceSampler, Permutation, StoreBatches
from tests.data.test_store import write_store


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 4097])
def test_the_permutation_is_a_bijection(n):
    perm = Permutation(n, seed=3)(np.arange(n))
    assert sorted(perm.tolist()) == list(range(n))
    if n > 100:
        assert (perm != np.arange(n)).mean() > 0.9
        assert not np.array_equal(perm, Permutation(n, seed=4)(np.arange(n)))
        assert np.array_equal(perm, Permutation(n, seed=3)(np.arange(n)))


def stream(store, batch_size, world, rank, workers=2, epoch=0, start=(0, 0, 0), batches=None, seed=0):
    """The row ids one rank sees, through a real DataLoader with worker processes."""
    sampler = ExactlyOnceSampler(len(store), batch_size, world, rank, *start)
    sampler.set_epoch(epoch)
    loader = DataLoader(StoreBatches(store, batch_size, seed), batch_size=None, sampler=sampler, num_workers=workers)
    seen = []
    for i, batch in enumerate(loader):
        if batches is not None and i == batches:
            break
        assert batch["input_ids"].shape == (batch_size, store.seq_length)
        seen += batch["input_ids"][:, 0].tolist()
    return seen, sampler, len(loader)


def test_two_workers_times_two_ranks_see_every_row_exactly_once_including_a_resume(tmp_path):
    store = write_store(tmp_path / "s", 203)
    batch, world = 5, 2
    full = [stream(store, batch, world, rank)[0] for rank in range(world)]
    rows = full[0] + full[1]
    assert len(rows) == len(set(rows)) == 203 - 203 % (batch * world)  # the remainder: fewer than one global batch
    assert rows != sorted(rows)  # shuffled
    # interrupted after 7 batches on each rank, resumed from the recorded position: the same rows, none twice
    first_part, second_part = [], []
    for rank in range(world):
        seen, sampler, _ = stream(store, batch, world, rank, batches=7)
        first_part += seen
        position = sampler.position_after(7)
        rest, _, length = stream(store, batch, world, rank, start=(0, position, 7))
        assert length == len(full[rank]) // batch  # Lightning counts the whole epoch
        second_part += rest
        assert seen + rest == full[rank]  # continues with the next unseen batch, in the same order
    assert not set(first_part) & set(second_part)


def test_a_resume_on_another_number_of_devices_still_sees_each_row_once(tmp_path):
    store = write_store(tmp_path / "s", 120)
    seen, sampler, _ = stream(store, 4, 2, 0, workers=0, batches=5)
    seen += stream(store, 4, 2, 1, workers=0, batches=5)[0]
    position = sampler.position_after(5)
    rest = stream(store, 4, 1, 0, workers=0, start=(0, position, 5))[0]  # resumed on one device
    assert len(seen + rest) == len(set(seen + rest)) == 120


def test_epochs_and_seeds_change_the_order(tmp_path):
    store = write_store(tmp_path / "s", 64)
    epoch0 = stream(store, 4, 1, 0, workers=0)[0]
    assert stream(store, 4, 1, 0, workers=0)[0] == epoch0
    epoch1 = stream(store, 4, 1, 0, workers=0, epoch=1)[0]
    assert sorted(epoch1) == sorted(epoch0)  # the same rows ...
    assert epoch1 != epoch0  # ... in another order
    assert stream(store, 4, 1, 0, workers=0, seed=1)[0] != epoch0
    # a resume point belongs to its epoch: the next epoch starts from the beginning
    assert len(stream(store, 4, 1, 0, workers=0, epoch=1, start=(0, 32, 8))[0]) == 64
