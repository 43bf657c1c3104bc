"""Output heads, and the sparse prediction that runs the masked-LM head on the labelled positions only."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_lm.models.config import TransformerConfig
from lit_lm.models.layers.activations import activation_fn
from lit_lm.models.layers.norms import build_norm
from lit_lm.models.output import IGNORE_INDEX


class MixtureOfSoftmaxes(nn.Module):
    """Mixture of softmaxes (Yang et al. 2018): K softmaxes over the vocabulary, from K tanh projections of the
    hidden state, mixed by weights predicted from it. Lifts the rank limit of one softmax. Returns log-probabilities,
    which serve as logits: their log-softmax is themselves."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.components = config.output_softmaxes
        self.prior = nn.Linear(config.hidden_size, self.components, bias=False)
        self.latent = nn.Linear(config.hidden_size, self.components * config.hidden_size, bias=config.bias)

    def forward(self, hidden: torch.Tensor, decoder: nn.Linear) -> torch.Tensor:
        log_prior = F.log_softmax(self.prior(hidden).float(), dim=-1)  # [..., K]
        latent = torch.tanh(self.latent(hidden)).unflatten(-1, (self.components, -1))  # [..., K, hidden]
        log_probs = F.log_softmax(decoder(latent).float(), dim=-1)  # [..., K, vocab]
        return torch.logsumexp(log_prior.unsqueeze(-1) + log_probs, dim=-2)


class MaskedLMHead(nn.Module):
    """BERT's MLM head: optional transform (dense, activation, norm), then a projection onto the vocabulary.
    Decoders use it too, with ``output_bias=False`` (GPT-2's output projection has no bias)."""

    def __init__(self, config: TransformerConfig, output_bias: bool | None = None) -> None:
        super().__init__()
        self.transform = config.head_transform
        if self.transform:
            self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
            self.act = activation_fn(config.head_activation)
            self.norm = build_norm(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size,
                                 bias=config.bias if output_bias is None else output_bias)
        self.mixture = MixtureOfSoftmaxes(config) if config.output_softmaxes > 1 else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.transform:
            hidden = self.norm(self.act(self.dense(hidden)))
        if self.mixture is not None:
            return self.mixture(hidden, self.decoder)
        return self.decoder(hidden)


def prediction_count(positions: int, rate: float) -> int:
    """How many positions sparse prediction keeps for a batch of ``positions``: the expected number of labelled
    ones at ``rate`` plus 3 standard deviations. About one batch in 700 has more (its extra labelled positions are
    left out of that step's loss); 2048 positions at rate 0.15 keep 356, 16% more than the expected 307."""
    return min(positions, math.ceil(rate * positions + 3 * math.sqrt(positions * rate * (1 - rate))))


def select_predictions(
    hidden: torch.Tensor, labels: torch.Tensor, rate: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden states and labels of the labelled positions, flattened to ``[n, hidden]`` and ``[n]``
    (sparse prediction: Geiping & Goldstein 2022, cramming).

    With ``rate`` None, ``n`` is the number of labelled positions (it varies by batch). With a rate, ``n`` is
    ``prediction_count(batch * seq, rate)``: fixed by the batch shape, so the shapes are static and the model
    compiles; slots beyond the labelled positions get label -100 (ignored by the loss).
    """
    hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    labelled = labels != IGNORE_INDEX
    if rate is None:
        return hidden[labelled], labels[labelled]
    n = prediction_count(len(labels), rate)
    index = torch.nonzero_static(labelled, size=n, fill_value=0).squeeze(-1)
    used = torch.arange(n, device=labels.device) < labelled.sum()
    return hidden[index], torch.where(used, labels[index], IGNORE_INDEX)
