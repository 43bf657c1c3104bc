"""A fixed held-out set: the same sequences, with the same masks, scored for every run of a comparison.

Runs that trained with different masking rates, schedules or architectures report validation losses that do not
compare (each masks its own way). A ``HeldOutSet`` fixes everything once: the held-out rows of a data store, spread
over every held-out document, and, for masked-LM models, one masking of them (BERT's 15%, 80/10/10, seeded). Every
run is then scored on exactly those tokens: the mean cross-entropy over the masked tokens (masked-LM) or over every
next token (causal-LM). The ablation runner builds one per ablation; ``lit_lm.callbacks.HeldOutLoss`` scores it
during training.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from lit_lm.checkpoint import write_file_atomically
from lit_lm.models.output import IGNORE_INDEX

Objective = Literal["masked", "causal"]
MASK_RATE, MASK_SEED = 0.15, 20221228  # BERT's rate; the seed: any fixed number (cramming's arXiv date)


@dataclass
class HeldOutSet:
    """Held-out ``inputs`` (masked where ``objective`` is "masked"), their ``labels`` (-100 where not scored) and
    ``attention_mask``, all ``[sequences, length]``; ``card``: the data card of the store they came from."""

    inputs: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    objective: Objective
    card: dict = field(default_factory=dict)

    @classmethod
    def from_datamodule(cls, datamodule, objective: Objective, sequences: int = 512, mask_rate: float = MASK_RATE,
                        seed: int = MASK_SEED) -> "HeldOutSet":
        """Up to ``sequences`` rows of a prepared ``PretrainingDataModule``'s validation split, evenly spaced (so
        every held-out document is in), masked once with a seeded generator for a masked-LM objective."""
        from lit_lm.modules.masking import mask_tokens

        datamodule.setup("fit")
        rows = torch.cat([batch["input_ids"] for batch in datamodule.val_dataloader()])
        if len(rows) == 0:
            raise ValueError("the data store has no held-out rows (data.val_fraction is 0?): nothing to score on")
        pick = torch.linspace(0, len(rows) - 1, min(sequences, len(rows))).long()
        input_ids = rows[pick]
        attention_mask = (input_ids != datamodule.pad_token_id).long()
        if objective == "causal":
            labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
            return cls(input_ids, labels, attention_mask, objective, dict(datamodule.card))
        allowed = torch.ones(datamodule.vocab_size, dtype=torch.bool)
        allowed[torch.tensor(datamodule.special_token_ids)] = False
        inputs, labels = mask_tokens(
            input_ids, mask_rate=mask_rate, mask_token_id=datamodule.mask_token_id,
            special_token_ids=torch.tensor(datamodule.special_token_ids),
            replacement_ids=allowed.nonzero().squeeze(1), generator=torch.Generator().manual_seed(seed))
        return cls(inputs, labels, attention_mask, objective, dict(datamodule.card))

    @property
    def scored_tokens(self) -> int:
        labels = self.labels[:, 1:] if self.objective == "causal" else self.labels
        return int((labels != IGNORE_INDEX).sum())

    def save(self, path: str | Path) -> Path:
        """Writes the set to ``path`` atomically (a half-written file is never read)."""
        return write_file_atomically(path, lambda tmp: torch.save(
            {"inputs": self.inputs, "labels": self.labels, "attention_mask": self.attention_mask,
             "objective": self.objective, "card": self.card}, tmp))

    @classmethod
    def load(cls, path: str | Path) -> "HeldOutSet":
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"held-out set {path} does not exist: the ablation runner writes it") from None
        return cls(data["inputs"], data["labels"], data["attention_mask"], data.get("objective", "masked"),
                   data.get("card", {}))

    @torch.no_grad()
    def score(self, model: torch.nn.Module, batch_size: int = 64) -> float:
        """Mean cross-entropy of ``model`` (a lit-lm ``EncoderForMaskedLM`` or ``DecoderForCausalLM``) over every
        scored token, in float32 on the model's device; the model's training mode is restored afterwards."""
        was_training, device = model.training, next(model.parameters()).device
        model.eval()
        total, count = 0.0, 0
        try:
            for start in range(0, len(self.inputs), batch_size):
                part = slice(start, start + batch_size)
                labels = self.labels[part].to(device)
                out = model(self.inputs[part].to(device), attention_mask=self.attention_mask[part].to(device),
                            labels=labels)
                scored = labels[:, 1:] if self.objective == "causal" else out.labels  # out.labels: sparse prediction's
                n = int((scored != IGNORE_INDEX).sum())
                if n:
                    total, count = total + float(out.loss) * n, count + n
        finally:
            model.train(was_training)
        if count == 0:
            raise ValueError("the held-out set has no scored token")
        return total / count
