"""The pretraining DataModule, a thin Lightning adapter: its settings become a `Recipe` (lit_lm.data.recipe), which
plans, keys and builds (or reuses) the cached token store; this module streams that store for one exact pass per
epoch, resumably, and tells the model what the tokenizer decided (vocab size, special tokens)."""

import json
import os
from functools import cached_property
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from lit_lm.data.cache import default_cache_dir
from lit_lm.data.recipe import (CleaningConfig, CorpusError, DedupConfig, DocumentSplit, Recipe, SourceConfig,
                                TokenizerConfig)
from lit_lm.data.remote import check_storage_options, fetch_store
from lit_lm.data.store import TokenStore
from lit_lm.data.streaming import ExactlyOnceSampler, ResumableDataLoader, StoreBatches, StoreRows
from lit_lm.data.tokenizer import SpecialTokens, load_tokenizer
from lit_lm.runs import ResumeError, differences


class PretrainingDataModule(L.LightningDataModule):
    """Pretraining data: read, clean, deduplicate, tokenize and pack a corpus once into a cached store, then stream it
    for exactly one pass per epoch (every row once across workers and ranks, resumable mid-epoch).

    Args:
        paths: Files, folders or globs: text (.txt .md .rst, also .gz), JSONL (`text` field), Parquet, or folders saved
            by HuggingFace `datasets`. With neither `paths` nor `sources`, the embedded default corpus is used: the
            English documentation and docstrings shipped with Python itself.
        sources: Several sources with their own format, text field and mixing weight (see SourceConfig); added to
            `paths`.
        split: How text becomes documents: 'file' (a text file or a JSONL/Parquet record is one document), 'paragraph'
            (each blank-line paragraph), or 'line' (each non-empty line).
        cleaning: Unicode normalisation, case, length and junk filters.
        dedup: Exact and near-duplicate removal.
        tokenizer: Which tokenizer to load, or which kind to train.
        seq_length: Tokens per training row, [CLS] / <s> included.
        cross_documents: Let a document continue into the next row (encoders); False keeps rows within document
            boundaries, padding the rest (an option for decoders).
        val_fraction: Fraction of documents held out for validation (by document: no validation text is trained on).
        batch_size: Rows per micro-batch on each device.
        num_workers: DataLoader worker processes.
        num_proc: Processes used to clean and hash text while building the store; None uses every core.
        seed: Seed of the validation split, the source-weight sampling and the per-epoch shuffle.
        cache_dir: Where stores are cached; None uses $LIT_LM_CACHE or ~/.cache/lit-lm.
        progress: Show progress bars while building the store.
        store: Train from a store built and uploaded once (``python -m lit_lm.data upload``) instead of building one:
            its URL, ``s3://bucket/prefix`` or any fsspec URL (docs/object-storage.md). Its files are downloaded
            once into a read cache under `cache_dir`; `paths` and `sources` are not read (the corpus is the
            store's), and the other settings above that shape a store must match the store's.
        storage_options: Options of the store's filesystem (s3fs), e.g. ``{endpoint_url: http://host:9000}`` for an
            S3-compatible server; never credentials (the config is saved with the run): those come from the
            environment or ~/.aws.
    """

    def __init__(
        self,
        paths: list[str] | None = None,
        sources: list[SourceConfig] | None = None,
        split: DocumentSplit = "file",
        cleaning: CleaningConfig = CleaningConfig(),
        dedup: DedupConfig = DedupConfig(),
        tokenizer: TokenizerConfig = TokenizerConfig(),
        seq_length: int = 128,
        cross_documents: bool = True,
        val_fraction: float = 0.05,
        batch_size: int = 32,
        num_workers: int = 0,
        num_proc: int | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        progress: bool = True,
        store: str | None = None,
        storage_options: dict | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0 or (num_proc is not None and num_proc < 1):
            raise ValueError("data.batch_size and data.num_proc must be >= 1 and data.num_workers >= 0.")
        Recipe.check(split, seq_length, val_fraction, paths)  # at once; the corpus is looked at on first use
        check_storage_options(storage_options)
        self.paths, self.sources, self.split = paths, sources, split
        self.cleaning, self.dedup, self.tokenizer_config = cleaning, dedup, tokenizer
        self.seq_length, self.cross_documents, self.val_fraction = seq_length, cross_documents, val_fraction
        self.batch_size, self.num_workers, self.seed, self.progress = batch_size, num_workers, seed, progress
        self.num_proc = num_proc or os.cpu_count() or 1
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.store, self.storage_options = store, storage_options
        self.card: dict = {}
        self._resume: dict | None = None
        self._sampler: ExactlyOnceSampler | None = None

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
    def mask_token_id(self) -> int | None:
        """[MASK] / <mask>; None for tokenizers without one (GPT-2's): a masked-LM then stops with a clear error."""
        return self.special_tokens.mask

    @property
    def bos_token_id(self) -> int | None:
        return self.special_tokens.bos

    @property
    def eos_token_id(self) -> int | None:
        return self.special_tokens.eos

    @property
    def special_token_ids(self) -> list[int]:
        return self.special_tokens.ids

    # ---- the store: planned, keyed and built by the recipe ----
    @cached_property
    def recipe(self) -> Recipe:
        """What shapes the store, the corpus's paths resolved once (on first use: a bad path then stops the run with
        one clear line, not inside the CLI's instantiation)."""
        return Recipe.plan(self.paths, self.sources, self.split, self.cleaning, self.dedup, self.tokenizer_config,
                           self.seq_length, self.val_fraction, self.seed, self.cross_documents)

    @cached_property
    def store_dir(self) -> Path:
        """The recipe's cached store, built on first use (see Recipe.build), or the read cache of ``store``; its data
        card goes to ``card``."""
        if self.store is not None:
            store, self.card = fetch_store(self.store, self.cache_dir, self.shape_settings(), self.storage_options,
                                           self.progress)
            downloaded = self.card["downloaded_files"]
            rank_zero_info(f"data: read cache {store} of {self.store} ({downloaded} files downloaded)")
            rank_zero_info(f"data card: {json.dumps(self.card)}")
            return store
        store, self.card = self.recipe.build(self.cache_dir, self.num_proc, self.progress)
        rank_zero_info(f"data: {'reusing' if self.card['cache_hit'] else 'built'} {store}")
        rank_zero_info(f"data card: {json.dumps(self.card)}")
        return store

    def shape_settings(self) -> dict:
        """This module's settings that shape a store, the corpus aside (a store given by URL carries its own)."""
        return Recipe(None, self.split, self.cleaning, self.dedup, self.tokenizer_config, self.seq_length,
                      self.val_fraction, self.seed, self.cross_documents).settings

    def prepare_data(self) -> None:
        _ = self.store_dir

    # ---- serving ----
    def setup(self, stage: str) -> None:
        self.train_store = TokenStore(self.store_dir / "train")
        self.val_store = TokenStore(self.store_dir / "val")
        world = self.trainer.world_size if self.trainer else 1
        if len(self.train_store) < self.batch_size * world:
            raise CorpusError(
                f"the training split holds {len(self.train_store)} rows, fewer than one batch (data.batch_size "
                f"{self.batch_size} x {world} device(s)); add text to data.paths or lower data.batch_size."
            )
        if stage == "fit" and self.trainer is not None:
            for logger in self.trainer.loggers:  # the data card on the dashboard, next to the config
                logger.log_hyperparams({"data_card": self.card})
            self._fit_validation_interval(len(self.train_store) // (self.batch_size * world))

    def _fit_validation_interval(self, batches: int) -> None:
        """A recipe's validation interval in batches, written for a large corpus, may exceed a small corpus's one
        epoch, which Lightning refuses; validate at the end of the epoch instead, and say so."""
        trainer = self.trainer
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        interval = trainer.val_check_interval
        if isinstance(interval, int) and trainer.check_val_every_n_epoch is not None and 0 < batches < interval:
            rank_zero_warn(f"data: trainer.val_check_interval {interval} is more than the {batches} batches of this "
                           f"corpus's one epoch; validating after batch {batches} instead.")
            trainer.val_check_interval = batches

    def train_dataloader(self) -> DataLoader:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        resume = self._resume or {}
        self._sampler = ExactlyOnceSampler(
            len(self.train_store), self.batch_size, world, rank, start_epoch=resume.get("epoch", 0),
            start_position=resume.get("position", 0), start_batches=resume.get("batches", 0))
        if self.num_workers:  # tokenizing is done; silence the tokenizers fork warning in the workers
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return ResumableDataLoader(StoreBatches(self.train_store, self.batch_size, self.seed), batch_size=None,
                                   sampler=self._sampler, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0, generator=self._loader_generator())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(StoreRows(self.val_store), batch_size=self.batch_size, num_workers=self.num_workers,
                          generator=self._loader_generator())

    def _loader_generator(self) -> torch.Generator:
        """A generator of its own for a loader's worker seeds: torch would otherwise draw them from the global random
        stream each time a loader starts (a validation, an epoch), which the training's masks and dropout draw from,
        so a resumed run, which starts its loaders at other times, would draw other masks."""
        return torch.Generator().manual_seed(self.seed)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    # ---- resuming mid-epoch: Lightning stores this in checkpoints ----
    def resume_settings(self) -> dict:
        """What a resumed run must share with the checkpoint: the store's settings (the corpus by its hash) and the
        micro-batch, on which the stream's position depends."""
        identity = (json.loads((self.store_dir / "manifest.json").read_text())["identity"] if self.store is not None
                    else self.recipe.identity())  # a store by URL: what it was built from, as its manifest says
        return {**identity, "batch_size": self.batch_size}

    def state_dict(self) -> dict:
        if self.trainer is None or self._sampler is None:
            return {}
        loop = self.trainer.fit_loop
        done = loop.epoch_loop.batch_progress.current.processed  # batches trained this epoch
        # the epoch those batches belong to: the one last started (current_epoch is already the next one once the
        # epoch's loop has ended, though a budget or max_steps may have ended it before its rows did)
        epoch = max(loop.epoch_progress.current.started - 1, 0)
        return {"epoch": epoch, "position": self._sampler.position_after(done), "batches": done,
                "rows": len(self.train_store), "seed": self.seed, "settings": self.resume_settings()}

    def resume_differences(self, state: dict) -> list[str]:
        """One line per data setting in which a checkpoint's ``state`` differs from this module's."""
        if not state:
            return []
        if "settings" in state:  # "corpus" is a hash of the files: say which setting names it
            return [line.replace("data.init_args.corpus:", "data.init_args.paths (the corpus files or their contents):")
                    for line in differences(state["settings"], self.resume_settings(), "data.init_args")]
        rows = len(TokenStore(self.store_dir / "train"))  # a checkpoint written before settings were saved
        return differences({"rows": state.get("rows"), "seed": state.get("seed")}, {"rows": rows, "seed": self.seed},
                           "data.init_args")

    def load_state_dict(self, state: dict) -> None:
        lines = self.resume_differences(state)
        if lines:
            raise ResumeError("the checkpoint was trained on other data:\n  " + "\n  ".join(lines))
        if state:
            self._resume = state
