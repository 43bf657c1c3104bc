"""Token dropping (Hou et al. 2022, "Token Dropping for Efficient BERT Pretraining"): in training, the middle blocks of
an encoder process only the tokens whose ids the masked-LM finds hardest; the others skip from the first of those
blocks to the block after the last, where every token is processed again.

``TokenImportance`` keeps the running masked-LM loss of every vocabulary id (the paper's cumulative loss) and picks
the tokens to keep; ``Transformer.forward`` takes the picked positions as ``keep`` and runs the blocks
``token_dropping_layers(config)`` on them alone (``gather_tokens`` / ``scatter_tokens`` / ``kept_inputs``).
"""

import math

import torch
from torch import nn

from lit_lm.models.config import TransformerConfig, config_check
from lit_lm.models.layers.inputs import AttentionInputs
from lit_lm.models.output import IGNORE_INDEX

IMPORTANCE_DECAY = 0.99
"""Weight of an id's previous running loss when a batch brings new losses of it (an exponential moving average)."""


def token_dropping_layers(config: TransformerConfig) -> tuple[int, int]:
    """The blocks ``start .. end - 1`` that see only the kept tokens, with the defaults filled in: from
    ``(num_layers - 1) // 2`` to ``num_layers - 1`` (the paper's BERT-base: blocks 6 to 11 of 12, counting from 1)."""
    start = (config.num_layers - 1) // 2 if config.token_dropping_start is None else config.token_dropping_start
    end = config.num_layers - 1 if config.token_dropping_end is None else config.token_dropping_end
    return start, end


@config_check
def check_token_dropping(config: TransformerConfig) -> None:
    keep = config.token_dropping_keep
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"model config: token_dropping_keep must be in (0, 1] (1 disables token dropping), "
                         f"got {keep}.")
    if keep == 1.0:
        return
    start, end = token_dropping_layers(config)
    if not 0 <= start < end <= config.num_layers:
        raise ValueError(
            f"model config: token dropping runs blocks token_dropping_start ({start}) to token_dropping_end - 1 "
            f"({end - 1}) on the kept tokens; it needs 0 <= start < end <= num_layers ({config.num_layers})"
            + ("; a single block leaves nothing to drop in: use num_layers >= 2." if config.num_layers < 2 else ".")
        )
    problems = [name for name, on in (
        ("relative_positions (the kept tokens are no longer contiguous; use absolute positions)",
         config.relative_positions != "none"),
        (f"token_mixer: {config.token_mixer} (it mixes by position)", config.token_mixer != "attention"),
        ("qkv_conv_kernel_size (it convolves neighbours)", config.qkv_conv_kernel_size),
        ("layer_widths (dropped and kept tokens must share a width)", config.layer_widths is not None),
        ("conv_kernel_size with token_dropping_start 0 (nGiE runs beside the first block on every token)",
         config.conv_kernel_size and start == 0),
    ) if on]
    if problems:
        raise ValueError(f"model config: token_dropping_keep < 1 cannot be combined with {'; '.join(problems)}.")


def gather_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x: [batch, seq, ...] -> [batch, kept, ...], the positions ``keep`` ([batch, kept]) of every row."""
    index = keep.reshape(*keep.shape, *(1,) * (x.dim() - 2)).expand(*keep.shape, *x.shape[2:])
    return x.gather(1, index)


def scatter_tokens(full: torch.Tensor, keep: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``full`` [batch, seq, ...] with the positions ``keep`` replaced by ``kept`` [batch, kept, ...]: the dropped
    tokens come back with the states they had when they were dropped."""
    index = keep.reshape(*keep.shape, *(1,) * (full.dim() - 2)).expand(*kept.shape)
    return full.to(kept.dtype).scatter(1, index, kept)  # under autocast the stream may change dtype on the way


def kept_inputs(inputs: AttentionInputs, keep: torch.Tensor) -> AttentionInputs:
    """The attention inputs of the kept tokens alone: their padding mask (as keys) and token mask."""
    key_mask = None if inputs.key_mask is None else inputs.key_mask.gather(-1, keep[:, None, None, :])
    token_mask = None if inputs.token_mask is None else gather_tokens(inputs.token_mask, keep)
    return inputs._replace(key_mask=key_mask, token_mask=token_mask)


class TokenImportance(nn.Module):
    """The running masked-LM loss of every vocabulary id (Hou et al. 2022's importance), and the choice of tokens to
    keep from it. Ids not yet predicted start at ``log(vocab_size)`` (an untrained model's loss), above most trained
    ones, so new ids are kept until their loss is known. The buffer is part of the LightningModule's checkpoint (a
    resumed run continues it), not of the model (exports never see it). Under DDP each rank keeps its own."""

    def __init__(self, vocab_size: int, decay: float = IMPORTANCE_DECAY) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("loss", torch.full((vocab_size,), math.log(vocab_size)))

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.loss = self.loss.float()  # a running average needs float32's resolution, also in a bf16-true module
        return self

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Fold in a batch's per-token losses: ``logits`` [..., vocab] and their ``labels`` (-100: not predicted),
        as ``LMOutput`` gives them (sparse or not)."""
        logits, labels = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
        losses = nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
        labelled = (labels != IGNORE_INDEX).float()
        ids = labels.clamp(min=0)
        sums = torch.zeros_like(self.loss).index_add_(0, ids, losses * labelled)
        counts = torch.zeros_like(self.loss).index_add_(0, ids, labelled)
        mean = sums / counts.clamp(min=1)
        self.loss.copy_(torch.where(counts > 0, self.decay * self.loss + (1 - self.decay) * mean, self.loss))

    @torch.no_grad()
    def keep(self, input_ids: torch.Tensor, labels: torch.Tensor, special_ids: torch.Tensor, pad_token_id: int,
             fraction: float) -> torch.Tensor:
        """Sorted positions [batch, kept] to keep in every row: the labelled (masked) positions and the special tokens
        always, padding never, and then the tokens whose ids have the highest running loss, up to ``fraction`` of
        the row (more when a row's masked and special tokens alone exceed it)."""
        real = input_ids != pad_token_id
        forced = (labels != IGNORE_INDEX) | (torch.isin(input_ids, special_ids) & real)
        score = torch.where(forced, math.inf, self.loss[input_ids])
        score = torch.where(real | forced, score, -math.inf)
        length = input_ids.shape[1]
        kept = max(math.ceil(fraction * length), int(forced.sum(1).max()))  # a sync: masked tokens are never dropped
        return score.topk(min(kept, length), dim=1).indices.sort(dim=1).values
