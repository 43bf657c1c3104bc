"""Masked-language-model pretraining as a LightningModule."""

from dataclasses import replace

import lightning as L
import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.utilities import rank_zero_warn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_lm.models import EncoderForMaskedLM, TransformerConfig
from lit_lm.modules.masking import IGNORE_INDEX, mask_tokens
from lit_lm.modules.optim import OptimizerConfig


class MaskedLMModule(L.LightningModule):
    """Pretrains an encoder by predicting masked tokens (BERT, Devlin et al. 2018).

    Args:
        config: The encoder's shape and switches.
        optimizer: AdamW settings.
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
        if isinstance(config, dict):  # as stored in checkpoints written through the CLI
            config = TransformerConfig(**config)
        if isinstance(optimizer, dict):
            optimizer = OptimizerConfig(**optimizer)
        if not 0.0 < mask_rate < 1.0:
            raise ValueError(f"model.mask_rate must be in (0, 1), got {mask_rate}.")
        if mask_token_fraction < 0 or random_token_fraction < 0 or mask_token_fraction + random_token_fraction > 1:
            raise ValueError("model.mask_token_fraction and model.random_token_fraction must be >= 0 and sum to <= 1.")
        if config.sparse_prediction and config.sparse_prediction_rate is None:
            config = replace(config, sparse_prediction_rate=mask_rate)  # a fixed prediction count: static shapes
        pretrained = None
        if init_from is not None:
            from lit_lm.hf import load_pretrained

            pretrained = load_pretrained(init_from, training_config=config)
            config = pretrained.config
        if seq_length > config.max_sequence_length:
            raise ValueError(
                f"data.seq_length ({seq_length}) exceeds model.config.max_position_embeddings "
                f"({config.max_position_embeddings}, minus position_offset); lower the first or raise the second."
            )
        if mask_token_id is None:
            raise ValueError(
                "the tokenizer has no mask token ([MASK] or <mask>), which masked-LM pretraining needs; use a BERT or "
                "RoBERTa style tokenizer (data.tokenizer.special_tokens: bert or roberta)."
            )
        special = sorted(set(special_token_ids or [config.pad_token_id, mask_token_id]))
        if not all(0 <= i < config.vocab_size for i in [*special, mask_token_id]):
            raise ValueError(
                f"special token ids {special} / mask id {mask_token_id} fall outside the vocabulary of "
                f"{config.vocab_size}; the tokenizer and model.config.vocab_size disagree."
            )
        self.save_hyperparameters(ignore=["init_from"])  # the resolved config: a checkpoint reloads without the folder
        self.config = config
        self.optimizer_config = optimizer
        self.model = pretrained if pretrained is not None else EncoderForMaskedLM(config)
        self.register_buffer("special_ids", torch.tensor(special), persistent=False)
        allowed = torch.ones(config.vocab_size, dtype=torch.bool)
        allowed[self.special_ids] = False
        self.register_buffer("replacement_ids", allowed.nonzero().squeeze(1), persistent=False)
        self.val_loss = MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes=config.vocab_size, average="micro", ignore_index=IGNORE_INDEX)
        # a compiled function, not a module attribute: the state dict and checkpoints stay those of the plain model
        self._compiled_forward = torch.compile(self.model.forward) if compile else None

    def forward(self, input_ids, attention_mask=None, labels=None, token_type_ids=None):
        if self._compiled_forward is not None:
            try:
                return self._compiled_forward(input_ids, attention_mask=attention_mask, labels=labels,
                                              token_type_ids=token_type_ids)
            except Exception as error:  # any compiler failure: fall back to eager, which re-raises real errors
                self._compiled_forward = None
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
                rank_zero_warn(f"model.compile: torch.compile failed ({type(error).__name__}: {reason[:300]}); "
                               "continuing without it. Set model.compile: false to skip the attempt.")
        return self.model(input_ids, attention_mask=attention_mask, labels=labels, token_type_ids=token_type_ids)

    def _mask(self, input_ids: torch.Tensor, generator: torch.Generator | None = None):
        return mask_tokens(
            input_ids, mask_rate=self.hparams.mask_rate, mask_token_id=self.hparams.mask_token_id,
            special_token_ids=self.special_ids, replacement_ids=self.replacement_ids,
            mask_token_fraction=self.hparams.mask_token_fraction,
            random_token_fraction=self.hparams.random_token_fraction, generator=generator,
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        inputs, labels = self._mask(batch["input_ids"])
        out = self(inputs, batch.get("attention_mask"), labels, batch.get("token_type_ids"))
        self.log("train/loss", out.loss, prog_bar=True)
        if out.aux_loss is not None:  # mixture of experts: the load-balancing loss trains too
            self.log("train/aux_loss", out.aux_loss)
            return out.loss + out.aux_loss
        return out.loss

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

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainer = self._trainer
        # a fused AdamW unscales fp16 gradients inside its step, too late for Lightning to clip them first
        fused_allowed = trainer is None or not (str(trainer.precision) == "16-mixed" and trainer.gradient_clip_val)
        return self.optimizer_config.build(self.model, fused_allowed=fused_allowed)

    def training_flops(self, batch: dict) -> int:
        """FLOPs of one training forward and backward on ``batch`` (Lightning's ``measure_flops`` on its first
        sequence, times its length), for MFU. Leaves the random state and the gradients as they were."""
        input_ids = batch["input_ids"][:1]
        attention_mask = batch.get("attention_mask")
        attention_mask = attention_mask[:1] if attention_mask is not None else None
        device = input_ids.device
        forked_rng = (torch.random.fork_rng(devices=[device.index or 0], device_type=device.type)
                      if device.type == "cuda" else torch.random.fork_rng(devices=[]))
        params = list(self.model.parameters())
        grads = [p.grad for p in params]  # set aside, so the measuring backward cannot add to them
        for param in params:
            param.grad = None
        with forked_rng, sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention kernels escape the FLOP counter
            inputs, labels = self._mask(input_ids)
            flops = measure_flops(self.model, lambda: self.model(inputs, attention_mask, labels),
                                  loss_fn=lambda out: out.loss)
        for param, grad in zip(params, grads):
            param.grad = grad
        return flops * len(batch["input_ids"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Fail with one clear message, not a shape traceback, when the checkpoint's model differs from this one."""
        own = self.state_dict()
        for name, tensor in checkpoint.get("state_dict", {}).items():
            if name in own and own[name].shape != tensor.shape:
                saved = checkpoint.get("hyper_parameters", {}).get("config")
                saved_vocab = saved.get("vocab_size") if isinstance(saved, dict) else getattr(saved, "vocab_size", None)
                hint = ""
                if saved_vocab is not None and saved_vocab != self.config.vocab_size:
                    hint = (f" The checkpoint has a vocabulary of {saved_vocab} tokens but the tokenizer now has "
                            f"{self.config.vocab_size}: resume with the data and tokenizer settings it was trained with.")
                raise ValueError(
                    f"checkpoint does not fit this model: {name} is {tuple(tensor.shape)} in the checkpoint but "
                    f"{tuple(own[name].shape)} here.{hint}"
                )
