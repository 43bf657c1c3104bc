"""Replaced-token detection (ELECTRA, Clark et al. 2020) pretraining as a LightningModule."""

from dataclasses import replace

import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy

from lit_lm.models import TransformerConfig
from lit_lm.models.replaced_token import EmbeddingSharing, GeneratorShape, ReplacedTokenDetector, ReplacedTokenOutput
from lit_lm.modules.curvature import SampledLoss, sampled_binary_cross_entropy, sampled_cross_entropy
from lit_lm.modules.masking import TokenMasking
from lit_lm.modules.optim import OptimizerConfig
from lit_lm.modules.pretraining import (PretrainingModule, check_seq_length, forked_random_state, from_saved,
                                        split_batch)


class ReplacedTokenDetectionModule(PretrainingModule):
    """Pretrains an encoder (the discriminator) to tell, for every token, whether a small masked-LM generator
    replaced it (ELECTRA, Clark et al. 2020). The discriminator is what fine-tuning and ``python -m lit_lm.hf export``
    take from a run. Logs ``train/loss`` (generator loss + discriminator_loss_weight x discriminator loss),
    ``train/generator_loss``, ``train/discriminator_loss``, and ``val/loss``, ``val/generator_loss``,
    ``val/discriminator_loss``, ``val/rtd_acc`` (the discriminator's accuracy over the real tokens) on fixed masks.

    Args:
        config: The discriminator's shape and switches; the generator has the same, narrowed.
        optimizer: The optimizer (AdamW by default; ``OptimizerConfig.name`` lists the others) and its settings.
        generator_width_fraction: Generator width as a fraction of hidden_size, in (0, 1] (ELECTRA: 1/4 to 1/2 works
            best); its feed-forward width scales alike, its embeddings keep hidden_size (shared).
        generator_num_layers: Generator depth; None: the discriminator's (ELECTRA).
        generator_num_heads: Generator attention heads; None: as many as keep the discriminator's head size.
        embedding_sharing: 'shared' (ELECTRA: generator and discriminator use the same embedding tensors) or
            'gradient_disentangled' (DeBERTa-v3's GDES, He et al. 2021: the discriminator's embeddings are
            stop_gradient(the generator's) + a delta starting at zero).
        discriminator_loss_weight: Weight of the discriminator's loss beside the generator's (ELECTRA's lambda: 50).
        mask_rate: Fraction of non-special tokens the generator fills (ELECTRA 0.15).
        mask_token_fraction: Of those, the fraction shown to the generator as [MASK] (ELECTRA 0.85).
        random_token_fraction: Of those, the fraction shown as a random token; the rest stay as they are.
        special_token_ids: Token ids never masked nor sampled. Set from the tokenizer by the CLI.
        mask_token_id: Id of [MASK]. Set from the tokenizer by the CLI.
        seq_length: Tokens per training sequence. Set from the data by the CLI; checked against the position table.
        val_mask_seed: Seed of the fixed validation masks and draws, so the val/ metrics compare across evaluations.
        compile: Run the model through ``torch.compile``; if compiling fails, say why and continue uncompiled.
    """

    def __init__(
        self,
        config: TransformerConfig = TransformerConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        generator_width_fraction: float = 0.25,
        generator_num_layers: int | None = None,
        generator_num_heads: int | None = None,
        embedding_sharing: EmbeddingSharing = "shared",
        discriminator_loss_weight: float = 50.0,
        mask_rate: float = 0.15,
        mask_token_fraction: float = 0.85,
        random_token_fraction: float = 0.0,
        special_token_ids: list[int] | None = None,
        mask_token_id: int | None = 4,
        seq_length: int = 128,
        val_mask_seed: int = 1234,
        compile: bool = False,
    ) -> None:
        super().__init__()
        config, optimizer = from_saved(config, optimizer)
        TokenMasking.check_rates(mask_rate, mask_token_fraction, random_token_fraction)
        if config.sparse_prediction and config.sparse_prediction_rate is None:
            config = replace(config, sparse_prediction_rate=mask_rate)  # a fixed prediction count: static shapes
        check_seq_length(config, seq_length)
        masking = TokenMasking(config, mask_rate, mask_token_fraction, random_token_fraction, mask_token_id,
                               special_token_ids)
        shape = GeneratorShape(generator_width_fraction, generator_num_layers, generator_num_heads)
        self.save_resolved_hyperparameters(config=config)
        self.config = config
        self.optimizer_config = optimizer
        self.model = ReplacedTokenDetector(config, shape, embedding_sharing, discriminator_loss_weight,
                                           masking.special_ids.tolist())
        self.masking = masking
        self.val_losses = torch.nn.ModuleDict({name: MeanMetric() for name in
                                               ("loss", "generator_loss", "discriminator_loss")})
        self.val_acc = BinaryAccuracy()
        self._compile_if(compile)

    def _mask(self, input_ids: torch.Tensor, generator: torch.Generator | None = None):
        return self.masking(input_ids, generator)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None,
                mask_generator: torch.Generator | None = None) -> ReplacedTokenOutput:
        """The detector on ``input_ids`` masked afresh (with ``mask_generator``: reproducibly)."""
        masked, labels = self._mask(input_ids, mask_generator)
        return self.run_model(input_ids=input_ids, masked_ids=masked, labels=labels, attention_mask=attention_mask,
                              token_type_ids=token_type_ids)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        ids, mask, types = batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")
        if (length := self.train_windows(ids.shape[1])) is not None:  # sequence-length warmup: rows cut, then masked
            ids, mask, types = split_batch(length, ids, mask, types)
        out = self(ids, mask, types)
        self.log("train/generator_loss", out.generator_loss)
        self.log("train/discriminator_loss", out.discriminator_loss)
        return self.training_loss(out)

    def sampled_losses(self, out: ReplacedTokenOutput) -> list[SampledLoss]:
        """Both terms at sampled targets (Sophia): the generator's tokens, the discriminator's replaced-or-not,
        weighted as in the loss."""
        return [sampled_cross_entropy(out.generator_logits, out.generator_labels, "generator"),
                sampled_binary_cross_entropy(out.discriminator_logits, out.token_mask, "discriminator",
                                             self.model.discriminator_loss_weight)]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        seed = self.hparams.val_mask_seed + batch_idx
        device = batch["input_ids"].device
        mask_generator = torch.Generator(device=device).manual_seed(seed)
        with forked_random_state(device):  # the generator's draws fixed too, the training's stream left as it was
            torch.manual_seed(seed)
            out = self(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"), mask_generator)
        n_tokens = out.token_mask.sum()
        for name, value in (("loss", out.loss), ("generator_loss", out.generator_loss),
                            ("discriminator_loss", out.discriminator_loss)):
            self.val_losses[name].update(value, weight=n_tokens)
            self.log(f"val/{name}", self.val_losses[name], prog_bar=name == "loss")
        self.val_acc.update((out.discriminator_logits > 0)[out.token_mask], out.replaced[out.token_mask])
        self.log("val/rtd_acc", self.val_acc)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def training_flops(self, batch: dict) -> int:
        """FLOPs of one training forward and backward on ``batch`` (Lightning's ``measure_flops`` on its first
        sequence, times its length): generator and discriminator, for MFU. Leaves the random state and the
        gradients as they were."""
        input_ids = batch["input_ids"][:1]
        attention_mask = batch.get("attention_mask")
        attention_mask = attention_mask[:1] if attention_mask is not None else None
        with forked_random_state(input_ids.device):
            masked, labels = self._mask(input_ids)
            flops = self._step_flops(lambda: self.model(input_ids, masked, labels, attention_mask))
        return flops * len(batch["input_ids"])
