"""Serving the store for exactly one pass: every row once, none twice, across DataLoader workers and DDP ranks.

Each epoch's order is a seeded pseudo-random permutation of the rows, computed per index (a Feistel network with
cycle walking), so no index array of the corpus size is ever held. The permuted order is cut into global batches
of ``world_size * batch_size`` positions; rank r takes the r-th slice of each. One sampler in the main process of
each rank hands batch positions to the DataLoader workers, which read those rows: workers never choose samples,
so no row is served twice. The rows beyond the last full global batch (fewer than ``world_size * batch_size``) are
the documented remainder of an epoch, different rows each epoch.

Resuming: the sampler starts at the first position not yet consumed. `PretrainingDataModule` records that position
in Lightning checkpoints (its ``state_dict``), so ``--ckpt_path last`` continues with the next unseen batch.
"""

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lit_lm.data.minhash import mix64
from lit_lm.data.store import TokenStore

_U64 = np.uint64


class Permutation:
    """A seeded bijection of range(n), evaluated on any array of indices in O(1) memory per index.

    A 4-round balanced Feistel network permutes the smallest even-bit power-of-two domain >= n; indices that land
    outside range(n) are permuted again until they land inside ("cycle walking", Black & Rogaway 2002).
    """

    def __init__(self, n: int, seed: int) -> None:
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self.n, self.half, self.mask = n, bits // 2, _U64((1 << (bits // 2)) - 1)
        self.keys = np.random.default_rng(seed).integers(0, 2**63, 4, dtype=np.int64).astype(_U64)

    def _round_trip(self, x: np.ndarray) -> np.ndarray:
        half = _U64(self.half)
        left, right = x >> half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ (mix64(right ^ key) & self.mask)
        return (left << half) | right

    def __call__(self, index: np.ndarray) -> np.ndarray:
        out = self._round_trip(np.asarray(index, dtype=_U64))
        outside = out >= _U64(self.n)
        while outside.any():
            out[outside] = self._round_trip(out[outside])
            outside = out >= _U64(self.n)
        return out.astype(np.int64)


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class ExactlyOnceSampler(DistributedSampler):
    """Yields ``(epoch, first_position)`` of each of this rank's batches, from the first unconsumed position.

    A DistributedSampler only so that Lightning leaves it alone under DDP (it would otherwise wrap it in another);
    it splits the work across ranks itself.

    Args:
        num_rows: Rows in the store.
        batch_size: Rows per batch on one rank.
        num_replicas: DDP world size.
        rank: This process's rank.
        start_epoch, start_position: Resume point: in `start_epoch`, the positions before `start_position` were
            consumed (by all ranks together); other epochs start at 0.
        start_batches: Batches per rank already consumed in `start_epoch`, for the length Lightning counts with.
    """

    def __init__(self, num_rows: int, batch_size: int, num_replicas: int = 1, rank: int = 0, start_epoch: int = 0,
                 start_position: int = 0, start_batches: int = 0) -> None:  # no super().__init__: there is no dataset
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside a world of {num_replicas}.")
        self.num_rows, self.batch_size, self.num_replicas, self.rank = num_rows, batch_size, num_replicas, rank
        self.epoch, self.start_epoch = 0, start_epoch
        self.start_position, self.start_batches = start_position, start_batches
        self.shuffle, self.drop_last = True, True

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _start(self) -> tuple[int, int]:
        return (self.start_position, self.start_batches) if self.epoch == self.start_epoch else (0, 0)

    def __len__(self) -> int:
        """Batches of this rank in the whole epoch (those consumed before a resume included, as Lightning counts)."""
        position, batches = self._start()
        return batches + (self.num_rows - position) // self.global_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position, _ = self._start()
        for j in range((self.num_rows - position) // self.global_batch):
            yield self.epoch, position + j * self.global_batch + self.rank * self.batch_size

    def position_after(self, batches: int) -> int:
        """The first unconsumed position once this rank (and so every rank) has consumed `batches` this epoch."""
        position, done = self._start()
        return position + (batches - done) * self.global_batch


class ResumableDataLoader(DataLoader):
    """A DataLoader that tells Lightning it resumes mid-epoch (Lightning warns otherwise).

    The resume point itself travels in the datamodule's ``state_dict``, computed from the batches the trainer has
    actually processed: the loader's own count runs ahead by the batches Lightning prefetches.
    """

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class StoreBatches(Dataset):
    """Batches of the store in permuted order: item ``(epoch, first_position)`` is rows perm(first..first+B)."""

    def __init__(self, store: TokenStore, batch_size: int, seed: int) -> None:
        self.store, self.batch_size, self.seed = store, batch_size, seed
        self._permutation: tuple[int, Permutation] | None = None

    def __len__(self) -> int:
        return len(self.store) // self.batch_size

    def rows(self, epoch: int, first: int) -> np.ndarray:
        if self._permutation is None or self._permutation[0] != epoch:
            self._permutation = (epoch, Permutation(len(self.store), epoch_seed(self.seed, epoch)))
        return self._permutation[1](np.arange(first, first + self.batch_size))

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        tokens, lengths = self.store.read(self.rows(*item))
        return as_batch(tokens, lengths)


class StoreRows(Dataset):
    """Rows of the store in order, one per item (validation)."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        tokens, lengths = self.store.read(np.array([index]))
        return {k: v[0] for k, v in as_batch(tokens, lengths).items()}


def as_batch(tokens: np.ndarray, lengths: np.ndarray) -> dict[str, torch.Tensor]:
    input_ids = torch.from_numpy(tokens.astype(np.int64))
    mask = torch.arange(tokens.shape[1]) < torch.from_numpy(lengths.astype(np.int64))[:, None]
    return {"input_ids": input_ids, "attention_mask": mask.long()}
