"""Sequence classification and regression fine-tuning (GLUE-style) as a LightningModule."""

import contextvars
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer
from torchmetrics import MeanMetric, Metric, MetricCollection, PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy, MulticlassMatthewsCorrCoef

from lit_lm.checkpoint import config_from_dict
from lit_lm.data.tokenizer import SpecialTokens, TokenizerError, load_tokenizer
from lit_lm.models import TransformerConfig
from lit_lm.models.classifier import ClassifierOutput, SequenceClassifier
from lit_lm.modules.curvature import SampledLoss, sampled_cross_entropy, sampled_squared_error
from lit_lm.modules.optim import OptimizerConfig
from lit_lm.modules.pretraining import PretrainingModule


@dataclass(frozen=True)
class TaskMetric:
    """A GLUE metric: the torchmetrics it logs (``val/<name>``, from ``num_labels``) and the label counts it fits."""

    metrics: dict[str, Callable[[int], Metric]]
    fits: Callable[[int], bool]
    needs: str
    """What ``fits`` asks, for the error message."""


def _spearman() -> SpearmanCorrCoef:
    with warnings.catch_warnings():  # it keeps every prediction: a few thousand for a GLUE dev set, no burden
        warnings.filterwarnings("ignore", message=".*will save all targets and predictions")
        return SpearmanCorrCoef()


# The metrics as GLUE defines them (Wang et al. 2018); val/score is their mean.
METRICS: dict[str, TaskMetric] = {
    "accuracy": TaskMetric(  # SST-2, RTE, QNLI, MNLI
        {"accuracy": lambda n: MulticlassAccuracy(num_classes=n, average="micro")}, lambda n: n >= 2, "at least 2"),
    "f1_accuracy": TaskMetric(  # MRPC, QQP: F1 of the positive class 1, and accuracy
        {"f1": lambda n: BinaryF1Score(), "accuracy": lambda n: MulticlassAccuracy(num_classes=n, average="micro")},
        lambda n: n == 2, "exactly 2"),
    "matthews": TaskMetric(  # CoLA
        {"matthews": lambda n: MulticlassMatthewsCorrCoef(num_classes=n)}, lambda n: n >= 2, "at least 2"),
    "pearson_spearman": TaskMetric(  # STS-B: a regression
        {"pearson": lambda n: PearsonCorrCoef(), "spearman": lambda n: _spearman()}, lambda n: n == 1,
        "exactly 1 (a regression)"),
}

_restoring = contextvars.ContextVar("restoring", default=False)


@contextmanager
def _restoring_from_checkpoint():
    token = _restoring.set(True)
    try:
        yield
    finally:
        _restoring.reset(token)


def read_tokenizer(path: str) -> Tokenizer:
    """``model.init_args.tokenizer``: a tokenizer.json or a folder holding one; one error naming the setting."""
    file = Path(path).expanduser()
    file = file / "tokenizer.json" if file.is_dir() else file
    if not file.is_file():
        raise TokenizerError(f"model.init_args.tokenizer: {str(path)!r} is neither a tokenizer.json nor a folder "
                             f"holding one; pass the tokenizer the pretrained model was trained with (its data store "
                             f"folder or tokenizer.json), or leave it unset to use init_from's own.")
    try:
        return load_tokenizer(file)
    except TokenizerError as err:
        raise TokenizerError(f"model.init_args.tokenizer: {str(err).split(': ', 1)[-1]}") from None


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id padding uses: [PAD] / <pad>, or a GPT tokenizer's end-of-text token."""
    try:
        return SpecialTokens.from_tokenizer(tokenizer).pad
    except TokenizerError:
        raise TokenizerError("model.init_args.tokenizer has none of [PAD], <pad> or <|endoftext|> to pad with; use a "
                             "BERT, RoBERTa or GPT-2 style tokenizer.") from None


class SequenceClassificationModule(PretrainingModule):
    """Fine-tunes a pretrained body (or a random one: the scratch baseline) to classify or score a text or a pair
    of texts, as GLUE's tasks do. Logs ``train/loss``, ``val/loss``, the task's metrics (``val/accuracy``,
    ``val/f1``, ``val/matthews``, ``val/pearson``, ``val/spearman``) and ``val/score``, their mean, as fractions.

    Args:
        init_from: The pretrained model to start from: a lit-lm checkpoint (.ckpt or run folder), a folder written
            by ``python -m lit_lm.hf export``, or a local HuggingFace BERT, RoBERTa, DeBERTa-v2 or GPT-2 folder. Its
            architecture (and, unless pretrained_weights is false, its weights) replace config. None: start from
            config with random weights.
        pretrained_weights: Load init_from's weights. False keeps its architecture and tokenizer with random
            weights: the scratch baseline under the same fine-tuning budget.
        config: The architecture when there is no init_from; its vocab_size and pad_token_id follow the tokenizer.
        tokenizer: A tokenizer.json or a folder holding one. Default: init_from's own (checkpoints and exported
            folders keep theirs). Required without init_from.
        causal: Without init_from: a decoder body (GPT) instead of an encoder. With init_from, the source decides.
        num_labels: Number of classes; 1 means regression (a score). Set from the data by the CLI.
        metric: How validation is scored: accuracy, f1_accuracy, matthews or pearson_spearman. Set from the data
            by the CLI.
        pooling: The row's vector the head reads: first ([CLS] / <s>), mean (over real tokens), last (the last
            real token), or auto (first for encoders, last for decoders).
        dropout: Hidden dropout while fine-tuning, replacing the pretrained config's.
        attention_dropout: Attention-probability dropout while fine-tuning, replacing the pretrained config's.
        classifier_dropout: Dropout in the classification head.
        optimizer: The optimizer and its settings (AdamW at cramming's GLUE learning rate by default; see
            ``OptimizerConfig.name`` for the others).
        compile: Run the model through ``torch.compile``; if compiling fails, say why and continue uncompiled.
    """

    def __init__(
        self,
        init_from: str | None = None,
        pretrained_weights: bool = True,
        config: TransformerConfig = TransformerConfig(),
        tokenizer: str | None = None,
        causal: bool = False,
        num_labels: int = 2,
        metric: str = "accuracy",
        pooling: Literal["auto", "first", "mean", "last"] = "auto",
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        classifier_dropout: float = 0.1,
        optimizer: OptimizerConfig = OptimizerConfig(lr=4e-5, weight_decay=0.01),
        compile: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(config, dict):  # as stored in checkpoints written through the CLI
            config = config_from_dict(config)
        if isinstance(optimizer, dict):
            optimizer = OptimizerConfig(**optimizer)
        if metric not in METRICS:
            raise ValueError(f"model.metric must be one of {list(METRICS)}, got {metric!r}.")
        if num_labels < 1 or not METRICS[metric].fits(num_labels):
            raise ValueError(f"model.metric {metric} needs {METRICS[metric].needs} labels but model.num_labels is "
                             f"{num_labels}; set the two to agree (1 label is a regression: pearson_spearman).")
        for name, rate in (("dropout", dropout), ("attention_dropout", attention_dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {rate}.")
        source, loaded_tokenizer = None, None
        restoring = _restoring.get()  # load_from_checkpoint: the saved config is resolved; the tokenizer comes with it
        if init_from is not None and not restoring:
            from lit_lm.pretrained import load_pretrained_source

            source = load_pretrained_source(init_from)
            config, causal = source.config, source.causal
            loaded_tokenizer = read_tokenizer(tokenizer) if tokenizer is not None else source.tokenizer
            if loaded_tokenizer is None:
                raise TokenizerError(f"model.init_args.init_from: {source.source} holds no tokenizer; pass the one it was "
                                 f"trained with: --model.init_args.tokenizer <its tokenizer.json or data store "
                                 f"folder>.")
        elif not restoring:
            if tokenizer is None:
                raise TokenizerError("model.init_args.tokenizer is required without model.init_args.init_from (training "
                                 "from scratch): pass a tokenizer.json or a folder holding one.")
            loaded_tokenizer = read_tokenizer(tokenizer)
            config = replace(config, vocab_size=loaded_tokenizer.get_vocab_size(with_added_tokens=True),
                             pad_token_id=pad_token_id(loaded_tokenizer))
        tokens = loaded_tokenizer.get_vocab_size(with_added_tokens=True) if loaded_tokenizer is not None else 0
        if tokens > config.vocab_size:
            which = "model.init_args.tokenizer" if tokenizer is not None else f"the tokenizer of {init_from}"
            raise TokenizerError(f"{which} has {tokens} tokens but the model's vocabulary {config.vocab_size}; pass the "
                             f"tokenizer init_from was trained with (model.init_args.tokenizer).")
        config = replace(config, dropout=dropout, attention_dropout=attention_dropout)  # the fine-tuning recipe's
        if pooling == "auto":
            pooling = "last" if causal else "first"
        # the resolved config: a checkpoint reloads without the source
        self.save_resolved_hyperparameters(ignore=["init_from"], config=config, causal=causal, pooling=pooling)
        self.config, self.causal, self.optimizer_config = config, causal, optimizer
        self.tokenizer: Tokenizer | None = loaded_tokenizer
        self.model = SequenceClassifier(config, num_labels, causal, pooling, classifier_dropout)
        if source is not None and pretrained_weights:
            self.model.load_body(source.model)
        self.val_loss = MeanMetric()
        self.val_metrics = MetricCollection({name: build(num_labels)
                                             for name, build in METRICS[metric].metrics.items()})
        self._compile_if(compile)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """The fine-tuned module of a checkpoint, with its tokenizer; the pretrained source is not needed."""
        kwargs.setdefault("weights_only", False)  # the hyperparameters hold Python objects; this is the user's own run
        with _restoring_from_checkpoint():
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> ClassifierOutput:
        return self.run_model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              labels=labels)

    def _run(self, batch: dict, check_labels: bool = True) -> ClassifierOutput:
        labels = batch["labels"]
        if check_labels and self.hparams.num_labels > 1 and len(labels) and \
                (labels.min() < 0 or labels.max() >= self.hparams.num_labels):
            raise ValueError(f"a batch has label {int(labels.min() if labels.min() < 0 else labels.max())} but "
                             f"model.num_labels is {self.hparams.num_labels} (labels 0 .. "
                             f"{self.hparams.num_labels - 1}); set model.num_labels to the data's number of classes.")
        return self(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"), labels)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """The predicted class of each row, or its score (regression)."""
        return logits[:, 0].float() if self.hparams.num_labels == 1 else logits.argmax(dim=-1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # labels checked on the first batch (and every validation batch): no device sync on every training step
        return self.training_loss(self._run(batch, check_labels=batch_idx == 0))

    def sampled_losses(self, out: ClassifierOutput) -> list[SampledLoss]:
        """The classification loss at sampled labels (Sophia): a class from the softmax, or with one output a score
        from N(prediction, 1/2), whose negative log-likelihood the mean-squared error is."""
        if self.hparams.num_labels == 1:
            return [sampled_squared_error(out.logits[:, 0])]
        return [sampled_cross_entropy(out.logits, None, "classes")]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self._run(batch)
        labels = batch["labels"]
        self.val_loss.update(out.loss, weight=len(labels))
        targets = labels.float() if self.hparams.num_labels == 1 else labels
        self.val_metrics.update(self.predictions(out.logits), targets)

    def on_validation_epoch_end(self) -> None:
        if self.val_loss.update_count == 0:
            return
        computed = self.val_metrics.compute()  # MetricCollection sorts its names; log them in GLUE's order
        scores = {name: computed[name].float() for name in METRICS[self.hparams.metric].metrics}
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        for name, value in scores.items():
            self.log(f"val/{name}", value)
        self.log("val/score", torch.stack(list(scores.values())).mean(), prog_bar=True)  # GLUE: the metrics' mean
        with torch.inference_mode(False):  # fresh states that a later fit may update (after trainer.validate)
            self.val_loss.reset()
            self.val_metrics.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if checkpoint.get("tokenizer"):
            self.tokenizer = Tokenizer.from_str(checkpoint["tokenizer"])

    def training_flops(self, batch: dict) -> int:
        """FLOPs of one training forward and backward on ``batch`` (Lightning's ``measure_flops`` on its first row,
        times the number of rows), for MFU. Leaves the gradients as they were."""
        row = {k: v[:1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
        flops = self._step_flops(lambda: self.model(row["input_ids"], row.get("attention_mask"),
                                                    row.get("token_type_ids"), row["labels"]))
        return flops * len(batch["input_ids"])
