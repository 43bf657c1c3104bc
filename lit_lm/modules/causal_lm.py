"""Causal (next-token) language-model pretraining as a LightningModule, from scratch or continuing a pretrained
decoder (``init_from``)."""

from dataclasses import fields, replace

import torch
from lightning.pytorch.utilities import rank_zero_warn
from tokenizers import Tokenizer
from torchmetrics import MeanMetric

from lit_lm.data.tokenizer import TokenizerError
from lit_lm.models import IGNORE_INDEX, DecoderForCausalLM, TransformerConfig
from lit_lm.modules.curvature import SampledLoss, sampled_cross_entropy
from lit_lm.modules.optim import OptimizerConfig
from lit_lm.modules.pretraining import (PretrainingModule, check_seq_length, from_saved, split_next_token_labels,
                                        split_rows)

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
        init_from: A pretrained decoder to continue (the T5 paper's "LM adaptation", Raffel et al. 2020): a lit-lm
            causal-LM checkpoint (.ckpt or run folder), a folder written by ``python -m lit_lm.hf export``, or a local
            HuggingFace GPT-2 folder. Its architecture and weights replace config's, except config's training
            switches (dropout, attention_dropout, initializer_range, moe_aux_loss_weight); a warning names every
            other config setting it overrides. The data must use its tokenizer (data.tokenizer.path: the folder, or
            the run's data store folder), checked when training starts. The optimizer and schedule start fresh.
            None: config with random weights.

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
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        config, optimizer = from_saved(config, optimizer)
        source = None
        if init_from is not None:
            source = load_decoder(init_from)
            config = adopt_architecture(config, source.config, source.source)
        check_seq_length(config, seq_length)
        if eos_token_id is not None and not 0 <= eos_token_id < config.vocab_size:
            raise ValueError(f"the end-of-text id {eos_token_id} falls outside the vocabulary of {config.vocab_size}; "
                             f"the tokenizer and model.config.vocab_size disagree.")
        if source is None:
            self.save_hyperparameters(ignore=["init_from"])
        else:  # the resolved config: a checkpoint reloads and resumes without the source
            self.save_resolved_hyperparameters(ignore=["init_from"], config=config)
        self.config = config
        self.optimizer_config = optimizer
        self.model = DecoderForCausalLM(config)
        self.init_tokenizer: Tokenizer | None = None
        """init_from's tokenizer, which the data's must equal; None without init_from (or when it holds none)."""
        self.init_source: str | None = None
        if source is not None:
            self.model.load_state_dict(source.model.state_dict())
            self.init_tokenizer, self.init_source = source.tokenizer, source.source
        self.val_loss = MeanMetric()
        self._compile_if(compile)

    def setup(self, stage: str) -> None:
        if self.init_source is not None:
            self.check_data_tokenizer(getattr(self._trainer, "datamodule", None))

    def check_data_tokenizer(self, datamodule) -> None:
        """With init_from: the data's tokenizer must be init_from's (the same vocabulary, token for token), or its
        embeddings would read other tokens; one TokenizerError naming data.init_args.tokenizer.path otherwise.
        Without a data module with a tokenizer (plain dataloaders) there is nothing to check."""
        data_tokenizer = getattr(datamodule, "tokenizer", None)
        if data_tokenizer is None:
            return
        fix = ("point --data.init_args.tokenizer.path at init_from's tokenizer (an export or HuggingFace folder: the "
               "folder itself; a lit-lm run: its data store folder, printed as 'data: built/reusing <folder>', or "
               "export it with `python -m lit_lm.hf export`)")
        if self.init_tokenizer is None:
            if getattr(getattr(datamodule, "tokenizer_config", None), "path", None) is None:
                raise TokenizerError(f"model.init_args.init_from: {self.init_source} holds no tokenizer, and the data "
                                     f"trains its own, whose tokens the pretrained embeddings do not know; {fix}.")
            size = data_tokenizer.get_vocab_size(with_added_tokens=True)
            if size > self.config.vocab_size:
                raise TokenizerError(f"data.init_args.tokenizer.path: its {size} tokens exceed the "
                                     f"{self.config.vocab_size} of init_from's model ({self.init_source}); {fix}.")
            return
        ours = data_tokenizer.get_vocab(with_added_tokens=True)
        theirs = self.init_tokenizer.get_vocab(with_added_tokens=True)
        if ours != theirs:
            differing = sorted(set(ours.items()) ^ set(theirs.items()), key=lambda item: item[1])[:3]
            raise TokenizerError(
                f"data.init_args.tokenizer: the data's tokenizer ({len(ours)} tokens) is not the one init_from was "
                f"trained with ({self.init_source}: {len(theirs)} tokens; they differ at e.g. "
                f"{', '.join(f'{t!r}={i}' for t, i in differing)}); {fix}.")

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.run_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        input_ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), next_token_labels(batch)
        if (length := self.train_windows(input_ids.shape[1])) is not None:  # sequence-length warmup
            # each window with its own ids and the next one as labels: the windows' targets are the row's, each once
            input_ids, labels = split_rows(input_ids, length), split_next_token_labels(labels, length)
            mask = None if mask is None else split_rows(mask, length)  # right padding stays right padding
        return self.training_loss(self(input_ids, mask, labels))

    def sampled_losses(self, out) -> list[SampledLoss]:
        """Next-token cross-entropy at sampled next tokens (Sophia): the logit at t against labels[t + 1]."""
        targets = out.labels[:, 1:]
        return [sampled_cross_entropy(out.logits[:, :targets.shape[1]], targets)]

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


def load_decoder(init_from: str):
    """``init_from``'s pretrained model (``lit_lm.pretrained.Pretrained``), checked to be a decoder."""
    from lit_lm.pretrained import SETTING, PretrainedSourceError, load_pretrained_source

    source = load_pretrained_source(init_from)
    if not source.causal:
        raise PretrainedSourceError(f"{SETTING}: {source.source} is an encoder (masked-LM) model; a causal LM "
                                    f"continues a decoder: a CausalLMModule run, its export, or a GPT-2 folder.")
    return source


def adopt_architecture(recipe: TransformerConfig, pretrained: TransformerConfig, source: str) -> TransformerConfig:
    """The pretrained architecture with the recipe's training switches (dropout, ...); a warning names every other
    recipe setting it overrides (the vocabulary and padding id come from the data, checked at setup)."""
    from lit_lm.hf.folders import TRAINING_FIELDS

    overridden = [f"{f.name}: {getattr(recipe, f.name)!r} -> {getattr(pretrained, f.name)!r}" for f in fields(recipe)
                  if f.name not in (*TRAINING_FIELDS, "vocab_size", "pad_token_id")
                  and getattr(recipe, f.name) != getattr(pretrained, f.name)]
    if overridden:
        rank_zero_warn(f"model.init_args.init_from: {source} sets the architecture, overriding "
                       f"model.init_args.config's {', '.join(overridden)} (the recipe's value -> init_from's).")
    return replace(pretrained, **{name: getattr(recipe, name) for name in TRAINING_FIELDS})
