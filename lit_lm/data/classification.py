"""The fine-tuning DataModule for GLUE-style tasks: a labelled train file and validation file (lit_lm.data.labelled),
encoded with the model's own tokenizer the way its family expects, served in dynamically padded batches.

Encodings: the tokenizer's post-processor for encoders ([CLS] a [SEP] b [SEP] with type ids 0/1 for BERT, <s> a </s>
</s> b </s> for RoBERTa, an exported tokenizer.json's own template); for decoders a + eos + b + eos, so the last real
token, which a decoder's classifier pools, is always the end-of-text token.
"""

import os
from functools import cached_property
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from lit_lm.data.labelled import BadRows, LabelledFileError, LabelledRows, Task, check_delimiter, read_labelled
from lit_lm.data.tokenizer import SpecialTokens

Metric = Literal["auto", "accuracy", "f1_accuracy", "matthews", "pearson_spearman"]
CLASSIFICATION_METRICS = ("accuracy", "f1_accuracy", "matthews")


class ClassificationDataModule(L.LightningDataModule):
    """GLUE-style fine-tuning data: a labelled train file and validation file (TSV or CSV), tokenized with the model's
    own tokenizer, single texts or pairs encoded the way the model family expects.

    Args:
        train_file: The training file: .tsv (split on tabs, no quoting, as GLUE's), .csv (CSV quoting), or another
            delimited text file; UTF-8, a byte-order mark is fine.
        val_file: The validation file, with the same columns.
        text_columns: One text column, or two for a pair (premise/hypothesis, sentence1/sentence2): header names or
            0-based indices (negative ones count from the last column).
        label_column: The label column: a header name or a 0-based index.
        header: Whether the files' first line names the columns. Without one, the column count expected is the one
            most rows have.
        delimiter: The column separator, one character (\\t or tab for a tab); None: a tab for .tsv, a comma for .csv,
            otherwise guessed from the first line.
        task: classification (integer or string labels) or regression (float labels, e.g. STS-B).
        labels: The label names in id order, when the label column holds strings. None: integer labels are used as
            they are; string labels get the ids of the train file's sorted label names.
        metric: How validation is scored: accuracy, f1_accuracy (MRPC, QQP), matthews (CoLA) or pearson_spearman
            (STS-B); auto: accuracy for classification, pearson_spearman for regression.
        max_length: Tokens per example, special tokens included; longer examples are truncated, longest text first.
            The model's own position limit applies too.
        batch_size: Training examples per batch.
        eval_batch_size: Validation examples per batch.
        max_train_rows: Use only the first N good training rows (a quick run or a data budget); None uses all.
        bad_rows: Malformed rows (wrong column count, empty text, unparsable or unknown label): skip (count them and
            print a summary line per file) or error (stop at the first, naming its line).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        train_file: str,
        val_file: str,
        text_columns: list[str | int] = [0],  # noqa: B006 (jsonargparse reads the default; never mutated)
        label_column: str | int = 1,
        header: bool = True,
        delimiter: str | None = None,
        task: Task = "classification",
        labels: list[str] | None = None,
        metric: Metric = "auto",
        max_length: int = 128,
        batch_size: int = 16,
        eval_batch_size: int = 128,
        max_train_rows: int | None = None,
        bad_rows: BadRows = "skip",
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if task not in ("classification", "regression"):
            raise LabelledFileError(f"data.task must be classification or regression, got {task!r}.")
        if metric not in ("auto", *CLASSIFICATION_METRICS, "pearson_spearman"):
            raise LabelledFileError(f"data.metric must be auto, accuracy, f1_accuracy, matthews or pearson_spearman, "
                                    f"got {metric!r}.")
        if metric != "auto" and (metric == "pearson_spearman") != (task == "regression"):
            fits = "pearson_spearman" if task == "regression" else "accuracy, f1_accuracy or matthews"
            raise LabelledFileError(f"data.metric {metric} does not score a {task} task; use {fits} (or auto).")
        if task == "regression" and labels is not None:
            raise LabelledFileError("data.labels names classes; a regression task has none: leave it unset.")
        if not 1 <= len(text_columns) <= 2:
            raise LabelledFileError(f"data.text_columns: give one or two text columns, got {list(text_columns)!r}.")
        if max_length < 8 or batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise LabelledFileError("data.max_length must be >= 8, data.batch_size and data.eval_batch_size >= 1, and "
                                    "data.num_workers >= 0.")
        if max_train_rows is not None and max_train_rows < 1:
            raise LabelledFileError(f"data.max_train_rows must be >= 1 or null, got {max_train_rows}.")
        delimiter = check_delimiter(delimiter)
        if bad_rows not in ("skip", "error"):
            raise LabelledFileError(f"data.bad_rows must be skip or error, got {bad_rows!r}.")
        self.train_file, self.val_file = train_file, val_file
        self.text_columns, self.label_column = list(text_columns), label_column
        self.header, self.delimiter = header, delimiter
        self.task, self.labels, self._metric, self.max_length = task, labels, metric, max_length
        self.batch_size, self.eval_batch_size, self.max_train_rows = batch_size, eval_batch_size, max_train_rows
        self.bad_rows, self.num_workers = bad_rows, num_workers
        self.tokenizer: Tokenizer | None = None
        self.causal = False
        self.max_positions: int | None = None
        self._encoded: dict[str, "EncodedRows"] = {}

    # ---- what the model needs to know, read by the CLI's argument links (no tokenizer needed) ----
    @cached_property
    def train_rows(self) -> LabelledRows:
        """The train file's good rows, read once (all of them: max_train_rows is applied when encoding)."""
        rows = self._read(self.train_file, label_names=self.labels)
        rank_zero_info(f"data: {rows.summary()}{_label_counts(rows)}")
        return rows

    @cached_property
    def val_rows(self) -> LabelledRows:
        """The validation file's good rows; its labels must be the train file's (names, or ids below num_labels)."""
        integer = self.task == "classification" and self.train_rows.label_names is None
        rows = self._read(self.val_file, label_names=self.train_rows.label_names, integer_labels=integer or None,
                          num_classes=self.num_labels if integer else None)
        rank_zero_info(f"data: {rows.summary()}{_label_counts(rows)}")
        return rows

    def _read(self, path: str, **labels) -> LabelledRows:
        return read_labelled(path, self.text_columns, self.label_column, header=self.header, delimiter=self.delimiter,
                             task=self.task, bad_rows=self.bad_rows, **labels)

    @property
    def num_labels(self) -> int:
        """1 for regression; otherwise the number of label names, or the largest integer label of train + 1."""
        if self.task == "regression":
            return 1
        rows = self.train_rows
        return len(rows.label_names) if rows.label_names is not None else max(rows.labels) + 1

    @property
    def label_names(self) -> list[str] | None:
        """The class names in id order (string labels), or None (integer labels, regression)."""
        return None if self.task == "regression" else self.train_rows.label_names

    @property
    def metric(self) -> str:
        """The validation metric, resolved (never auto)."""
        if self._metric == "auto":
            return "pearson_spearman" if self.task == "regression" else "accuracy"
        if self._metric == "f1_accuracy" and self.num_labels != 2:
            raise LabelledFileError(f"data.metric f1_accuracy scores two classes; the train file has {self.num_labels}"
                                    f" (use accuracy or matthews).")
        return self._metric

    # ---- the tokenizer: the model's ----
    def attach(self, tokenizer: Tokenizer, causal: bool = False, max_positions: int | None = None) -> None:
        """Encode with `tokenizer` (not modified) for an encoder (causal False) or a decoder (True) whose position
        limit is `max_positions` (None: no limit beyond max_length)."""
        if causal and SpecialTokens.from_tokenizer(tokenizer).eos is None:
            raise LabelledFileError("data: a decoder's examples end with the end-of-text token, and this tokenizer has "
                                    "neither </s> nor <|endoftext|>; use the checkpoint's own tokenizer.")
        self.tokenizer, self.causal, self.max_positions = tokenizer, causal, max_positions
        self._encoded = {}

    @property
    def length_limit(self) -> int:
        return min(self.max_length, self.max_positions or self.max_length)

    def setup(self, stage: str) -> None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if self.tokenizer is None:
            tokenizer = getattr(module, "tokenizer", None)
            if tokenizer is None:
                raise LabelledFileError(
                    "data: the model has no tokenizer to encode the task's text with; start it from a checkpoint or "
                    "folder holding one (model.init_args.init_from), or give model.init_args.tokenizer.")
            config = getattr(module, "config", None)
            self.attach(tokenizer, bool(getattr(module, "causal", False)),
                        getattr(config, "max_sequence_length", None))
        self._check_model_labels(_model_labels(module))
        for split in ("train", "val") if stage == "fit" else ("val",):
            _ = self.encoded(split)

    def _check_model_labels(self, model_labels: int | None) -> None:
        if model_labels is None:
            return
        if self.task == "regression" and model_labels != 1:
            raise LabelledFileError(f"model.init_args.num_labels is {model_labels}, but a regression task needs 1; "
                                    f"leave it to the data (data.num_labels).")
        if self.task == "classification" and self.num_labels > model_labels:
            raise LabelledFileError(
                f"data: label id {self.num_labels - 1} of {self.train_file} does not fit a model with "
                f"model.init_args.num_labels {model_labels}; set it to {self.num_labels} (or leave it to the data).")

    def encoded(self, split: Literal["train", "val"]) -> "EncodedRows":
        """A split's rows tokenized (once per attached tokenizer)."""
        if self.tokenizer is None:
            raise LabelledFileError("data: no tokenizer yet; call attach(tokenizer, ...), or fit in a Trainer.")
        if split not in self._encoded:
            rows = self.train_rows.head(self.max_train_rows) if split == "train" else self.val_rows
            self._encoded[split] = encode_rows(rows, self.tokenizer, self.causal, self.length_limit)
        return self._encoded[split]

    # ---- serving ----
    @property
    def pad_token_id(self) -> int:
        return SpecialTokens.from_tokenizer(self.tokenizer).pad

    def _loader_settings(self) -> dict:
        if self.num_workers:  # tokenizing is done; silence the tokenizers fork warning in the workers
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return dict(collate_fn=PadBatch(self.pad_token_id), num_workers=self.num_workers,
                    persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(torch.initial_seed())  # seed_everything makes the order repeat
        return DataLoader(self.encoded("train"), batch_size=self.batch_size, shuffle=True, generator=generator,
                          **self._loader_settings())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.encoded("val"), batch_size=self.eval_batch_size, shuffle=False,
                          **self._loader_settings())


class EncodedRows(Dataset):
    """Tokenized examples, stored flat (token ids int32, type ids int8, one offset per row) with their labels."""

    def __init__(self, ids: list[list[int]], types: list[list[int]], labels: list[int] | list[float],
                 regression: bool) -> None:
        self.offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum([len(row) for row in ids], out=self.offsets[1:])
        self.ids = np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(self.offsets[-1]))
        self.types = np.fromiter((t for row in types for t in row), dtype=np.int8, count=int(self.offsets[-1]))
        self.labels = np.asarray(labels, dtype=np.float32 if regression else np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.generic]:
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.ids[start:end], self.types[start:end], self.labels[index]


class PadBatch:
    """Collate examples into a batch padded on the right with `pad_id` to its longest row: input_ids,
    attention_mask (1 real, 0 pad), token_type_ids and labels (long, or float32 for regression)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[tuple[np.ndarray, np.ndarray, np.generic]]) -> dict[str, torch.Tensor]:
        longest = max(len(ids) for ids, _, _ in examples)
        input_ids = torch.full((len(examples), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
        token_type_ids = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, (ids, types, _) in enumerate(examples):
            input_ids[row, :len(ids)] = torch.from_numpy(ids.astype(np.int64))
            token_type_ids[row, :len(ids)] = torch.from_numpy(types.astype(np.int64))
            attention_mask[row, :len(ids)] = 1
        labels = torch.from_numpy(np.array([label for _, _, label in examples]))
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                "labels": labels}


def encode_rows(rows: LabelledRows, tokenizer: Tokenizer, causal: bool, max_length: int) -> EncodedRows:
    """Tokenize single texts or pairs, truncated longest-first to `max_length` tokens with the special tokens."""
    regression = bool(rows.labels) and isinstance(rows.labels[0], float)
    pairs = len(rows.texts[0]) == 2
    plain = _plain_copy(tokenizer)
    if causal:
        ids = _encode_for_decoder(rows, plain, max_length, pairs, SpecialTokens.from_tokenizer(tokenizer).eos)
        return EncodedRows(ids, [[0] * len(row) for row in ids], rows.labels, regression)  # GPT-2 has no segments
    if pairs and plain.num_special_tokens_to_add(True) == 0:
        rank_zero_warn("data: this tokenizer adds no separator between the two texts of a pair (it has no "
                       "post-processor); an encoder then sees them run together. Use the checkpoint's own tokenizer.")
    # The tokenizers library's own truncation builds every overflowing piece (for pairs, every combination of
    # them): slow on long texts. Encode whole, then drop each text's tail tokens the way its longest_first would.
    ids, types = [], []
    for encoding in plain.encode_batch([t if pairs else t[0] for t in rows.texts]):
        if len(encoding.ids) <= max_length:
            ids.append(encoding.ids)
            types.append(encoding.type_ids)
            continue
        sequence = encoding.sequence_ids  # None for a special token, 0 / 1 for the first / second text's tokens
        lengths = [sequence.count(0), sequence.count(1)]
        budget = max_length - (len(sequence) - sum(lengths))
        keep = list(_longest_first(lengths[0], lengths[1], budget)) if pairs else [budget, 0]
        kept = [i for i, s in enumerate(sequence) if s is None or _take(keep, s)]
        ids.append([encoding.ids[i] for i in kept])
        types.append([encoding.type_ids[i] for i in kept])
    return EncodedRows(ids, types, rows.labels, regression)


def _take(keep: list[int], sequence: int) -> bool:
    """Whether the next token of text `sequence` is kept (counting down its quota)."""
    keep[sequence] -= 1
    return keep[sequence] >= 0


def _longest_first(a: int, b: int, budget: int) -> tuple[int, int]:
    """Tokens kept of two texts of `a` and `b` tokens within `budget`: the longer is cut first; when both must be
    cut, the first keeps budget // 2 and the second the rest (unless the first is longer), as `tokenizers` does."""
    if a + b <= budget:
        return a, b
    short, long = (b, a) if a > b else (a, b)
    if short <= budget // 2:
        short, long = short, budget - short
    else:
        short, long = budget // 2, budget - budget // 2
    return (long, short) if a > b else (short, long)


def _encode_for_decoder(rows: LabelledRows, tokenizer: Tokenizer, max_length: int, pairs: bool,
                        eos: int) -> list[list[int]]:
    """a + eos (+ b + eos): the texts are truncated, longest first; the final eos never is."""
    first = [e.ids for e in tokenizer.encode_batch([t[0] for t in rows.texts], add_special_tokens=False)]
    if not pairs:
        return [a[:max_length - 1] + [eos] for a in first]
    second = [e.ids for e in tokenizer.encode_batch([t[1] for t in rows.texts], add_special_tokens=False)]
    out = []
    for a, b in zip(first, second):
        keep_a, keep_b = _longest_first(len(a), len(b), max_length - 2)
        out.append(a[:keep_a] + [eos] + b[:keep_b] + [eos])
    return out


def _model_labels(module: L.LightningModule | None) -> int | None:
    """The model's num_labels: an attribute, its classifier's, or a hyperparameter; None when it has none."""
    for owner in (module, getattr(module, "model", None)):
        if isinstance(getattr(owner, "num_labels", None), int):
            return owner.num_labels
    labels = getattr(module, "hparams", {}).get("num_labels")
    return labels if isinstance(labels, int) else None


def _plain_copy(tokenizer: Tokenizer) -> Tokenizer:
    """A copy without padding or truncation: the caller's tokenizer keeps its own settings."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def _label_counts(rows: LabelledRows) -> str:
    """", labels 0: 29780, 1: 37569" for classification; nothing for regression."""
    if not rows.labels or isinstance(rows.labels[0], float):
        return ""
    counts = np.bincount(np.asarray(rows.labels))
    names = rows.label_names or [str(i) for i in range(len(counts))]
    return ", labels " + ", ".join(f"{names[i]}: {c}" for i, c in enumerate(counts) if c)
