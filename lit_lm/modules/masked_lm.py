"""Masked-language-model pretraining as a LightningModule."""

from dataclasses import replace

import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_lm.models import EncoderForMaskedLM, TransformerConfig
from lit_lm.models.layers.token_dropping import TokenImportance
from lit_lm.modules.masking import IGNORE_INDEX, TokenMasking
from lit_lm.modules.optim import OptimizerConfig
from lit_lm.modules.pretraining import (PretrainingModule, check_seq_length, forked_random_state, from_saved,
                                        split_batch)


class MaskedLMModule(PretrainingModule):
    """Pretrains an encoder by predicting masked tokens (BERT, Devlin et al. 2018).

    Args:
        config: The encoder's shape and switches.
        optimizer: The optimizer (AdamW by default; ``OptimizerConfig.name`` lists the others) and its settings.
        mask_rate: Fraction of non-special tokens chosen for prediction (BERT 0.15, cramming 0.25).
        mask_token_fraction: Of the chosen tokens, the fraction replaced by [MASK] (BERT 0.8).
        random_token_fraction: Of the chosen tokens, the fraction replaced by a random token (BERT 0.1); the rest
            stay as they are.
        special_token_ids: Token ids never masked nor used as random replacements. Set from the tokenizer by the CLI.
        mask_token_id: Id of [MASK]. Set from the tokenizer by the CLI.
        seq_length: Tokens per training sequence. Set from the data by the CLI; checked against the position table.
        val_mask_seed: Seed of the fixed validation masks, so val/loss is comparable across evaluations and runs.
        compile: Run the model through ``torch.compile``; if compiling fails, say why and continue uncompiled.
        init_from: A local HuggingFace model folder (BERT, RoBERTa, DeBERTa-v2, or a lit-lm export) to start from:
            its architecture and weights replace config's, except config's training switches (dropout, sparse
            prediction). Use its tokenizer too (data.tokenizer.path). See lit_lm.hf.
    """

    def __init__(
        self,
        config: TransformerConfig = TransformerConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        mask_rate: float = 0.15,
        mask_token_fraction: float = 0.8,
        random_token_fraction: float = 0.1,
        special_token_ids: list[int] | None = None,
        mask_token_id: int | None = 4,
        seq_length: int = 128,
        val_mask_seed: int = 1234,
        compile: bool = False,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        config, optimizer = from_saved(config, optimizer)
        TokenMasking.check_rates(mask_rate, mask_token_fraction, random_token_fraction)
        if config.sparse_prediction and config.sparse_prediction_rate is None:
            config = replace(config, sparse_prediction_rate=mask_rate)  # a fixed prediction count: static shapes
        pretrained = None
        if init_from is not None:
            from lit_lm.hf import load_pretrained

            pretrained = load_pretrained(init_from, training_config=config)
            config = pretrained.config
        check_seq_length(config, seq_length)
        masking = TokenMasking(config, mask_rate, mask_token_fraction, random_token_fraction, mask_token_id,
                               special_token_ids)
        self.save_resolved_hyperparameters(ignore=["init_from"], config=config)  # reloads without the folder
        self.config = config
        self.optimizer_config = optimizer
        self.model = pretrained if pretrained is not None else EncoderForMaskedLM(config)
        self.masking = masking
        self.token_importance = TokenImportance(config.vocab_size) if config.token_dropping_keep < 1 else None
        """Token dropping's running loss per token id (Hou et al. 2022); None without token dropping."""
        self.val_loss = MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes=config.vocab_size, average="micro", ignore_index=IGNORE_INDEX)
        self._compile_if(compile)

    def forward(self, input_ids, attention_mask=None, labels=None, token_type_ids=None, keep=None):
        extra = {} if keep is None else {"keep": keep}  # token dropping's kept positions, in training only
        return self.run_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                              token_type_ids=token_type_ids, **extra)

    def _mask(self, input_ids: torch.Tensor, generator: torch.Generator | None = None):
        return self.masking(input_ids, generator)

    def kept_tokens(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """Token dropping's kept positions of a masked batch (masked and special tokens always), or None without it."""
        if self.token_importance is None:
            return None
        return self.token_importance.keep(inputs, labels, self.masking.special_ids, self.config.pad_token_id,
                                          self.config.token_dropping_keep)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        inputs, labels = self._mask(batch["input_ids"])
        mask, types = batch.get("attention_mask"), batch.get("token_type_ids")
        if (length := self.train_windows(inputs.shape[1])) is not None:  # sequence-length warmup
            # masked before the cut, so each token is chosen as it would be in the whole row; only the first window
            # of a row starts with its [CLS]: the others start mid-text, as rows packed across documents do
            inputs, mask, labels, types = split_batch(length, inputs, mask, labels, types)
        out = self(inputs, mask, labels, types, keep=self.kept_tokens(inputs, labels))
        if self.token_importance is not None:
            self.token_importance.update(out.logits.detach(), out.labels)
        return self.training_loss(out)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        generator = torch.Generator(device=batch["input_ids"].device)
        generator.manual_seed(self.hparams.val_mask_seed + batch_idx)
        inputs, labels = self._mask(batch["input_ids"], generator)
        out = self(inputs, batch.get("attention_mask"), labels, batch.get("token_type_ids"))
        n_targets = (out.labels != IGNORE_INDEX).sum()
        if n_targets == 0:
            return
        self.val_loss.update(out.loss, weight=n_targets)
        self.val_acc.update(out.logits.argmax(-1), out.labels)
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/mlm_acc", self.val_acc)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def training_flops(self, batch: dict) -> int:
        """FLOPs of one training forward and backward on ``batch`` (Lightning's ``measure_flops`` on its first
        sequence, times its length), for MFU. Leaves the random state and the gradients as they were. With token
        dropping they are the FLOPs done (the middle blocks on the kept tokens); a sequence-length warmup is not
        counted (whole rows: its shorter windows do fewer attention FLOPs, so MFU reads a little high during it)."""
        input_ids = batch["input_ids"][:1]
        attention_mask = batch.get("attention_mask")
        attention_mask = attention_mask[:1] if attention_mask is not None else None
        with forked_random_state(input_ids.device):  # the masks and dropout drawn here leave the training's stream
            inputs, labels = self._mask(input_ids)
            keep = self.kept_tokens(inputs, labels)  # token dropping: the FLOPs of the tokens kept
            flops = self._step_flops(lambda: self.model(inputs, attention_mask, labels, keep=keep))
        return flops * len(batch["input_ids"])
