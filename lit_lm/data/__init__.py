"""Data: sources -> clean -> dedup -> tokenizer -> pack -> store -> stream; GLUE-style labelled task files for
fine-tuning. Never imports the model."""

from lit_lm.data.classification import ClassificationDataModule
from lit_lm.data.datamodule import PretrainingDataModule
from lit_lm.data.dedup import DedupConfig
from lit_lm.data.labelled import LabelledFileError, LabelledRows, read_labelled
from lit_lm.data.recipe import Recipe
from lit_lm.data.sources import CorpusError, SourceConfig
from lit_lm.data.text import CleaningConfig
from lit_lm.data.tokenizer import SpecialTokens, TokenizerConfig, TokenizerError

__all__ = ["PretrainingDataModule", "Recipe", "SourceConfig", "CleaningConfig", "DedupConfig", "TokenizerConfig",
           "CorpusError", "SpecialTokens", "TokenizerError", "ClassificationDataModule", "LabelledFileError",
           "LabelledRows", "read_labelled"]
