"""The pretraining DataModule: text files (or the embedded default) -> tokenizer -> packed, cached sequences."""

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from lit_lm.data import default_corpus
from lit_lm.data.cache import atomic_directory, build_lock, cache_key, default_cache_dir
from lit_lm.data.packing import pack, token_dtype
from lit_lm.data.sources import CorpusError, CorpusStats, DocumentSplit, fingerprint, read_documents, resolve_paths
from lit_lm.data.tokenizer import SpecialTokens, load_tokenizer, train_wordpiece

log = logging.getLogger(__name__)
STORE_VERSION = 1  # bump when the store layout or packing changes, so caches rebuild
ENCODE_CHUNK = 2048  # documents per encode_batch call: bounds memory, keeps both cores busy


@dataclass
class TokenizerConfig:
    """Which tokenizer to use, or how to train one on the corpus."""

    path: str | None = None
    """A tokenizer.json, or a folder holding one (e.g. a local HuggingFace model folder). None trains one."""
    vocab_size: int = 8192
    """Vocabulary size when training a WordPiece tokenizer on the training split."""
    lowercase: bool = True
    """Lower-case and strip accents before tokenizing (an uncased model), when training a tokenizer."""
    min_frequency: int = 2
    """Minimum count for a merge when training a tokenizer."""


def split_documents(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out whole documents for validation: a seeded random ``val_fraction`` of them, at least one each side."""
    order = np.random.default_rng(seed).permutation(len(docs))
    n_val = min(len(docs) - 1, max(1, math.ceil(val_fraction * len(docs))))
    return [docs[i] for i in order[n_val:]], [docs[i] for i in order[:n_val]]


class PackedSequences(Dataset):
    """Rows of a packed ``[n, seq_length]`` token array, each as a batch-ready dict."""

    def __init__(self, rows: np.ndarray, pad_id: int) -> None:
        self.rows = rows
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        input_ids = torch.from_numpy(self.rows[index].astype(np.int64))
        return {"input_ids": input_ids, "attention_mask": (input_ids != self.pad_id).long()}


class PretrainingDataModule(L.LightningDataModule):
    """Pretraining data: read, tokenize and pack a corpus once into a cached store, then serve it for training.

    Args:
        paths: Text files, folders (searched recursively for .txt/.md/.rst) or globs. None uses the embedded default
            corpus: the English documentation and docstrings shipped with Python itself.
        split: How files become documents: 'file' (one document per file) or 'paragraph' (per blank-line paragraph).
        tokenizer: Which tokenizer to load, or how to train one.
        seq_length: Tokens per training sequence, [CLS] included.
        val_fraction: Fraction of documents held out for validation (by document: no validation text is trained on).
        batch_size: Sequences per micro-batch.
        num_workers: DataLoader worker processes.
        seed: Seed of the train/validation split and of the shuffling.
        cache_dir: Where prepared data is cached; None uses $LIT_LM_CACHE or ~/.cache/lit-lm.
    """

    def __init__(
        self,
        paths: list[str] | None = None,
        split: DocumentSplit = "file",
        tokenizer: TokenizerConfig = TokenizerConfig(),
        seq_length: int = 128,
        val_fraction: float = 0.05,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if seq_length < 8:
            raise ValueError(f"data.seq_length must be at least 8, got {seq_length}.")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}.")
        if batch_size < 1 or num_workers < 0:
            raise ValueError("data.batch_size must be >= 1 and data.num_workers >= 0.")
        if paths is not None and len(paths) == 0:
            raise CorpusError("data.paths is an empty list; give files, folders or globs, or null for the default corpus.")
        self.paths = paths
        self.split = split
        self.tokenizer_config = tokenizer
        self.seq_length = seq_length
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.card: dict = {}

    # ---- what the model needs to know, read by the CLI's argument links ----
    @cached_property
    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.store_dir / "tokenizer.json")

    @cached_property
    def special_tokens(self) -> SpecialTokens:
        return SpecialTokens.from_tokenizer(self.tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def pad_token_id(self) -> int:
        return self.special_tokens.pad

    @property
    def mask_token_id(self) -> int:
        return self.special_tokens.mask

    @property
    def special_token_ids(self) -> list[int]:
        return self.special_tokens.ids

    # ---- building the store ----
    def _files(self) -> list[Path] | None:
        return None if self.paths is None else resolve_paths(self.paths)

    def _settings(self, files: list[Path] | None) -> dict:
        corpus = default_corpus.fingerprint() if files is None else fingerprint(files)
        return {
            "version": STORE_VERSION, "corpus": corpus, "split": self.split, "tokenizer": asdict(self.tokenizer_config),
            "seq_length": self.seq_length, "val_fraction": self.val_fraction, "seed": self.seed,
        }

    @cached_property
    def store_dir(self) -> Path:
        """The cached store for these settings, built on first use (under a lock, atomically)."""
        files = self._files()
        final = self.cache_dir / "stores" / cache_key(self._settings(files))
        with build_lock(final):
            if (final / "card.json").is_file():
                self.card = {**json.loads((final / "card.json").read_text()), "cache_hit": True, "seconds": 0.0}
            else:
                self.card = self._build(files, final)
        rank_zero_info(f"data: {'reusing' if self.card['cache_hit'] else 'built'} {final}\ndata card: {json.dumps(self.card)}")
        return final

    def _documents(self, files: list[Path] | None, stats: CorpusStats) -> list[str]:
        if files is None:
            docs = list(default_corpus.documents())
            stats.docs = len(docs)
        else:
            docs = list(read_documents(files, self.split, stats))
        if not docs:
            where = "the embedded default corpus" if files is None else f"{len(files)} file(s) in data.paths"
            raise CorpusError(f"{where} yielded no text: every file is empty or blank. Point data.paths at text.")
        if len(docs) < 2:
            raise CorpusError(
                "data.paths holds a single document, so none can be held out for validation; "
                "set data.split: paragraph, or add files."
            )
        return docs

    def _build(self, files: list[Path] | None, final: Path) -> dict:
        start = time.perf_counter()
        stats = CorpusStats()
        docs = self._documents(files, stats)
        train_docs, val_docs = split_documents(docs, self.val_fraction, self.seed)
        cfg = self.tokenizer_config
        if cfg.path is not None:
            tokenizer = load_tokenizer(cfg.path)
        else:
            log.info("training a WordPiece tokenizer (vocab %d) on %d documents", cfg.vocab_size, len(train_docs))
            tokenizer = train_wordpiece(train_docs, cfg.vocab_size, cfg.lowercase, cfg.min_frequency)
        special = SpecialTokens.from_tokenizer(tokenizer)
        dtype = token_dtype(tokenizer.get_vocab_size(with_added_tokens=True))
        with atomic_directory(final) as tmp:
            arrays = {}
            for name, part in (("train", train_docs), ("val", val_docs)):
                encoded = (
                    enc.ids
                    for i in range(0, len(part), ENCODE_CHUNK)
                    for enc in tokenizer.encode_batch(part[i : i + ENCODE_CHUNK], add_special_tokens=False)
                )
                arrays[name] = pack(encoded, self.seq_length, special.cls, special.sep, special.pad, dtype,
                                    pad_last=name == "val")
                np.save(tmp / f"{name}.npy", arrays[name])
            if len(arrays["train"]) == 0:
                raise CorpusError(
                    f"the training split has fewer than data.seq_length ({self.seq_length}) tokens; "
                    "add text to data.paths or lower data.seq_length."
                )
            tokenizer.save(str(tmp / "tokenizer.json"))
            card = {
                "files": stats.files, "bytes": stats.bytes, "replaced_bytes": stats.replaced_bytes,
                "docs_in": stats.docs, "docs_out": len(docs), "train_docs": len(train_docs), "val_docs": len(val_docs),
                "tokens": int(sum(int((a != special.pad).sum()) for a in arrays.values())),
                "sequences": int(sum(len(a) for a in arrays.values())),
                "train_sequences": len(arrays["train"]), "val_sequences": len(arrays["val"]),
                "seq_length": self.seq_length, "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
                "seconds": round(time.perf_counter() - start, 3),
            }
            (tmp / "card.json").write_text(json.dumps(card, indent=1))
        return {**card, "cache_hit": False}

    def prepare_data(self) -> None:
        _ = self.store_dir

    # ---- serving ----
    def setup(self, stage: str) -> None:
        load = lambda name: np.load(self.store_dir / f"{name}.npy", mmap_mode="r")  # noqa: E731
        self.train_set = PackedSequences(load("train"), self.pad_token_id)
        self.val_set = PackedSequences(load("val"), self.pad_token_id)
        if len(self.train_set) < self.batch_size:
            raise CorpusError(
                f"the training split holds {len(self.train_set)} sequences, fewer than data.batch_size "
                f"({self.batch_size}); add text to data.paths or lower data.batch_size."
            )

    def train_dataloader(self) -> DataLoader:
        if self.num_workers:  # tokenizing is done; silence the tokenizers fork warning in the workers
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True, num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed), persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
