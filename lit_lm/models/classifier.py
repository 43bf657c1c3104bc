"""Sequence classification and regression on the transformer body (GLUE-style fine-tuning).

``SequenceClassifier`` pools the body's hidden states into one vector per row (the first token, the mean over real
tokens, or the last real token) and maps it to ``num_labels`` scores through BERT's pooler-style head. Its body is
stored under the same attribute as the language models' (``encoder`` or ``decoder``), so a pretrained body's state
dict loads as it is (``load_body``).
"""

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.transformer import DecoderForCausalLM, EncoderForMaskedLM, Transformer, init_module

Pooling = Literal["first", "mean", "last"]
POOLINGS: tuple[str, ...] = get_args(Pooling)


@dataclass
class ClassifierOutput:
    """What ``SequenceClassifier`` returns. ``loss`` is None without labels; train on ``loss + aux_loss`` when
    ``aux_loss`` is not None (the weighted load-balancing loss of mixture-of-experts layers)."""

    logits: torch.Tensor
    """[batch, num_labels]; with num_labels 1, the predicted score (regression)."""
    loss: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    """[batch, hidden]: the pooled hidden state the head read."""
    aux_loss: torch.Tensor | None = None


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """One vector per row of ``hidden`` [batch, seq, hidden]: the first token ([CLS] / <s>, BERT), the mean over
    the real tokens, or the last real token (a decoder's only token that has seen the whole row; the last 1 of the
    mask, so right padding is skipped)."""
    if pooling == "first":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1) if pooling == "mean" else hidden[:, -1]
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1)
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = (positions * (attention_mask != 0)).argmax(dim=1)  # the index of the last real token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class ClassificationHead(nn.Module):
    """BERT's pooler and classifier (Devlin et al. 2018), as cramming fine-tunes it: dropout, dense, tanh, dropout,
    then a projection onto the labels."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, num_labels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(torch.tanh(self.dense(self.dropout(pooled)))))


class SequenceClassifier(nn.Module):
    """A transformer body, a pooling and a classification (or, with ``num_labels=1``, regression) head:
    ``model(input_ids, attention_mask=None, token_type_ids=None, labels=None) -> ClassifierOutput``.

    Args:
        config: The body's architecture (a pretrained model's, with the fine-tuning dropout).
        num_labels: Number of classes; 1 makes a regression model (one score, mean-squared error).
        causal: A decoder body (GPT) instead of an encoder (BERT).
        pooling: first (the [CLS] / <s> token), mean (over real tokens) or last (the last real token: decoders).
        classifier_dropout: Dropout before and inside the head.
    """

    def __init__(self, config: TransformerConfig, num_labels: int, causal: bool = False, pooling: Pooling = "first",
                 classifier_dropout: float = 0.1) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"model.num_labels must be at least 1 (1 = regression), got {num_labels}.")
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling must be one of {list(POOLINGS)}, got {pooling!r}.")
        if not 0.0 <= classifier_dropout < 1.0:
            raise ValueError(f"model.classifier_dropout must be in [0, 1), got {classifier_dropout}.")
        self.config, self.causal, self.num_labels, self.pooling = config, causal, num_labels, pooling
        # the body initialised exactly as pretraining initialises it (GPT-2's scaled residuals for decoders)
        body = (DecoderForCausalLM if causal else EncoderForMaskedLM)(config).body
        if causal:
            self.decoder = body
        else:
            self.encoder = body
        self.head = ClassificationHead(config.hidden_size, num_labels, classifier_dropout)
        self.head.apply(lambda module: init_module(module, config.initializer_range))

    @property
    def body(self) -> Transformer:
        return self.decoder if self.causal else self.encoder

    @property
    def body_name(self) -> str:
        """The attribute (and state-dict prefix) of the body: ``encoder`` or ``decoder``, as in the language models."""
        return "decoder" if self.causal else "encoder"

    def load_body(self, source: nn.Module | dict[str, torch.Tensor]) -> "SequenceClassifier":
        """Copy a pretrained body's weights: from a language model (``EncoderForMaskedLM`` / ``DecoderForCausalLM``),
        a ``Transformer``, or a state dict (the body's own, a whole language model's with ``encoder.`` /
        ``decoder.`` names, or a Lightning checkpoint's with ``model.encoder.`` / ``model.decoder.`` names).
        Missing, unexpected or misshapen weights are one ``ValueError`` naming them."""
        if isinstance(source, nn.Module):
            source = getattr(source, "body", source).state_dict()
        for prefix in (f"{self.body_name}.", f"model.{self.body_name}."):  # a language model's, a Lightning module's
            if any(name.startswith(prefix) for name in source):
                source = {name.removeprefix(prefix): v for name, v in source.items() if name.startswith(prefix)}
                break
        own = self.body.state_dict()
        missing = sorted(set(own) - set(source))
        unexpected = sorted(set(source) - set(own))
        misshapen = [f"{name} {tuple(value.shape)} (here {tuple(own[name].shape)})" for name, value in source.items()
                     if name in own and own[name].shape != value.shape]
        problems = [f"{what}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                    for what, names in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
                    if names]
        if problems:
            raise ValueError(f"the pretrained {self.body_name} does not fit this classifier's "
                             f"({'; '.join(problems)}); is it the same architecture (encoder or decoder)?")
        self.body.load_state_dict(source)
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> ClassifierOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}.")
        if self.config.type_vocab_size <= 1:  # RoBERTa's single type (or none): segment ids carry nothing
            token_type_ids = None
        out = self.body(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        pooled = pool(out.hidden_states, attention_mask, self.pooling)
        logits = self.head(pooled)
        aux_loss = None if out.aux_loss is None else self.config.moe_aux_loss_weight * out.aux_loss
        loss = None if labels is None else classification_loss(logits, labels)
        return ClassifierOutput(logits=logits, loss=loss, pooled=pooled, aux_loss=aux_loss)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the classes, or with one output (regression) the mean-squared error of the score;
    in float32."""
    if logits.shape[-1] == 1:
        return F.mse_loss(logits[:, 0].float(), labels.float())
    return F.cross_entropy(logits.float(), labels.long())
