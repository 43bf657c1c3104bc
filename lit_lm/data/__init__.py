"""Data: sources -> clean -> tokenizer -> pack -> cached store -> loaders. Never imports the model."""

from lit_lm.data.datamodule import PackedSequences, PretrainingDataModule, TokenizerConfig
from lit_lm.data.sources import CorpusError
from lit_lm.data.tokenizer import SpecialTokens, TokenizerError

__all__ = ["PretrainingDataModule", "TokenizerConfig", "PackedSequences", "CorpusError", "SpecialTokens",
           "TokenizerError"]
