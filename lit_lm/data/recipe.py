"""A data recipe: every setting that shapes a store, the store's cache key, and the build that makes or reuses it.

``Recipe.plan(paths=..., sources=..., ...)`` resolves the corpus's paths once into `Source` values; ``settings``
is everything that shaped the store and ``key`` its hash; ``build(cache_dir)`` runs sources -> clean -> dedup ->
tokenizer -> pack -> store (lit_lm.data.pipeline) under a lock, atomically, or reuses the store already cached.
"""

import json
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

from lit_lm.data import default_corpus
from lit_lm.data.cache import atomic_directory, build_lock, cache_key
from lit_lm.data.dedup import DedupConfig
from lit_lm.data.pipeline import build_store
from lit_lm.data.sources import CorpusError, Source, SourceConfig
from lit_lm.data.text import CleaningConfig, DocumentSplit
from lit_lm.data.tokenizer import TokenizerConfig
from lit_lm.runs import disk_space_for

STORE_VERSION = 2  # bump when the store layout, cleaning or packing changes, so caches rebuild

__all__ = ["Recipe", "STORE_VERSION", "SourceConfig", "CleaningConfig", "DedupConfig", "TokenizerConfig",
           "DocumentSplit", "CorpusError"]


@dataclass
class Recipe:
    """Everything that shapes a store; its cache key (`key`) is a hash of `settings`."""

    sources: list[Source] | None
    """The corpus, paths resolved; None: the embedded default corpus."""
    split: DocumentSplit
    cleaning: CleaningConfig
    dedup: DedupConfig
    tokenizer: TokenizerConfig
    seq_length: int
    val_fraction: float
    seed: int
    cross_documents: bool

    def __post_init__(self) -> None:
        self.check(self.split, self.seq_length, self.val_fraction)

    @staticmethod
    def check(split: str, seq_length: int, val_fraction: float, paths: list[str] | None = None) -> None:
        """Refuse settings no store can have, naming the setting (before any file is looked at)."""
        if seq_length < 8:
            raise ValueError(f"data.seq_length must be at least 8, got {seq_length}.")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}.")
        if split not in ("file", "paragraph", "line"):
            raise ValueError(f"data.split must be 'file', 'paragraph' or 'line', got {split!r}.")
        if paths is not None and len(paths) == 0:
            raise CorpusError("data.paths is an empty list; give files, folders or globs, or null for the default "
                              "corpus.")

    @classmethod
    def plan(cls, paths: list[str] | None = None, sources: list[SourceConfig] | None = None,
             split: DocumentSplit = "file", cleaning: CleaningConfig = CleaningConfig(),
             dedup: DedupConfig = DedupConfig(), tokenizer: TokenizerConfig = TokenizerConfig(),
             seq_length: int = 128, val_fraction: float = 0.05, seed: int = 0,
             cross_documents: bool = True) -> "Recipe":
        """The recipe of PretrainingDataModule's settings of the same names: `paths` (one source, first) and
        `sources` are resolved here, once, into the `Source` values the key and the build read."""
        cls.check(split, seq_length, val_fraction, paths)
        configs = ([SourceConfig(paths=list(paths))] if paths is not None else []) + list(sources or [])
        return cls([Source.resolve(config) for config in configs] or None, split, cleaning, dedup, tokenizer,
                   seq_length, val_fraction, seed, cross_documents)

    @cached_property
    def settings(self) -> dict:
        """Everything that shaped the store: the corpus (its files by path, size and time), cleaning, dedup,
        tokenizer, packing and split settings, and the store format's version. Read once: the files' times as
        they were when the store was first asked for."""
        corpus = default_corpus.fingerprint() if self.sources is None else [s.fingerprint() for s in self.sources]
        tokenizer = asdict(self.tokenizer)
        if self.tokenizer.path:  # a given tokenizer: its content matters, not only its path
            file = Path(self.tokenizer.path).expanduser()
            file = file / "tokenizer.json" if file.is_dir() else file
            tokenizer["content"] = file.stat().st_mtime_ns if file.is_file() else None
        return {"version": STORE_VERSION, "corpus": corpus, "split": self.split, "cleaning": self.cleaning.identity(),
                "dedup": asdict(self.dedup), "tokenizer": tokenizer, "seq_length": self.seq_length,
                "val_fraction": self.val_fraction, "seed": self.seed, "cross_documents": self.cross_documents}

    @property
    def key(self) -> str:
        """The store's cache key: a hash of `settings`."""
        return cache_key(self.settings)

    def identity(self) -> dict:
        """`settings` with the corpus as its hash: what a run resumed on this data must share with its checkpoint."""
        return {**self.settings, "corpus": cache_key(self.settings["corpus"])}

    def build(self, cache_dir: Path, num_proc: int = 1, progress: bool = True) -> tuple[Path, dict]:
        """The store under ``cache_dir/stores/<key>``, built if absent (under a lock, atomically), and its data
        card with ``cache_hit``, ``seconds`` and ``store`` added."""
        start = time.perf_counter()
        final = Path(cache_dir) / "stores" / self.key
        with build_lock(final):
            if (final / "card.json").is_file():
                card, hit = json.loads((final / "card.json").read_text()), True
            else:
                with disk_space_for("the data store", final.parent, "data.cache_dir (or $LIT_LM_CACHE)"), \
                        atomic_directory(final) as tmp:
                    card, hit = build_store(self, tmp, num_proc, progress), False
        return final, {**card, "cache_hit": hit, "seconds": round(time.perf_counter() - start, 3), "store": str(final)}
