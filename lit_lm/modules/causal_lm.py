"""Causal (next-token) language-model pretraining as a LightningModule."""

import torch
from torchmetrics import MeanMetric

from lit_lm.models import DecoderForCausalLM, TransformerConfig
from lit_lm.models import IGNORE_INDEX
from lit_lm.models.transformer import max_input_length
from lit_lm.modules.optim import OptimizerConfig
from lit_lm.modules.pretraining import PretrainingModule

# GPT-2 small's architecture (Radford et al. 2019): pre-LN with a final norm, tanh GELU, no head transform.
GPT2_SMALL = TransformerConfig(
    vocab_size=50257, max_position_embeddings=1024, type_vocab_size=0, norm_placement="pre", final_norm=True,
    embedding_norm=False, head_transform=False, activation="gelu_tanh", norm_eps=1e-5,
)


def next_token_labels(batch: dict) -> torch.Tensor:
    """The targets of a batch: its own ids, -100 on padding (the model shifts them by one)."""
    input_ids, mask = batch["input_ids"], batch.get("attention_mask")
    return input_ids if mask is None else input_ids.masked_fill(mask == 0, IGNORE_INDEX)


class CausalLMModule(PretrainingModule):
    """Pretrains a decoder by predicting each next token (GPT, Radford et al. 2018). Rows are documents packed
    back to back, each followed by the end-of-text token, so the model also learns where documents end.

    Args:
        config: The decoder's shape and switches (the default is GPT-2 small's architecture).
        optimizer: The optimizer (AdamW by default; ``OptimizerConfig.name`` lists the others) and its settings.
        seq_length: Tokens per training sequence. Set from the data by the CLI; checked against the position table.
        eos_token_id: The end-of-text token that separates documents. Set from the tokenizer by the CLI; the sample
            callback stops generating at it.
        compile: Run the model through ``torch.compile``; if compiling fails, say why and continue uncompiled.

    Logs ``train/loss``, ``val/loss`` (mean next-token cross-entropy in nats over the validation tokens) and
    ``val/ppl`` (its exponential: token-level perplexity).
    """

    def __init__(
        self,
        config: TransformerConfig = GPT2_SMALL,
        optimizer: OptimizerConfig = OptimizerConfig(),
        seq_length: int = 128,
        eos_token_id: int | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(config, dict):  # as stored in checkpoints written through the CLI
            config = TransformerConfig(**config)
        if isinstance(optimizer, dict):
            optimizer = OptimizerConfig(**optimizer)
        if (limit := max_input_length(config)) is not None and seq_length > limit:  # only tables limit length
            raise ValueError(
                f"data.seq_length ({seq_length}) exceeds the {limit} tokens that model.config.max_position_embeddings "
                f"({config.max_position_embeddings}, minus position_offset) allows; lower the first or raise the "
                f"second (relative positions alone, with position_embedding: none, take any length)."
            )
        if eos_token_id is not None and not 0 <= eos_token_id < config.vocab_size:
            raise ValueError(f"the end-of-text id {eos_token_id} falls outside the vocabulary of {config.vocab_size}; "
                             f"the tokenizer and model.config.vocab_size disagree.")
        self.save_hyperparameters()
        self.config = config
        self.optimizer_config = optimizer
        self.model = DecoderForCausalLM(config)
        self.val_loss = MeanMetric()
        self._compile_if(compile)

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.run_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.training_loss(self(batch["input_ids"], batch.get("attention_mask"), next_token_labels(batch)))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        labels = next_token_labels(batch)
        out = self(batch["input_ids"], batch.get("attention_mask"), labels)
        n_targets = (labels[:, 1:] != IGNORE_INDEX).sum()
        if n_targets > 0:
            self.val_loss.update(out.loss, weight=n_targets)

    def on_validation_epoch_end(self) -> None:
        if self.val_loss.update_count == 0:
            return
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/ppl", loss.exp())

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    def training_flops(self, batch: dict) -> int:
        """FLOPs of one training forward and backward on ``batch`` (Lightning's ``measure_flops`` on its first
        sequence, times the number of sequences), for MFU. Leaves the gradients as they were."""
        row = {k: v[:1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
        labels = next_token_labels(row)
        flops = self._step_flops(lambda: self.model(row["input_ids"], row.get("attention_mask"), labels))
        return flops * len(batch["input_ids"])
