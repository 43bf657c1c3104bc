"""What every lit-lm pretraining LightningModule shares: compiling with a fallback, the training loss with its
mixture-of-experts term, the optimizer (AdamW by default) with decay groups, a clear checkpoint check, and FLOP
counting for MFU."""

import inspect
from collections.abc import Callable
from dataclasses import asdict, is_dataclass

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.plugins.precision import MixedPrecision as LightningMixedPrecision
from lightning.pytorch.utilities import rank_zero_warn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lit_lm.models.config import TransformerConfig
from lit_lm.models.output import IGNORE_INDEX, LMOutput
from lit_lm.models.transformer import max_input_length
from lit_lm.modules.curvature import SampledLoss, sampled_cross_entropy
from lit_lm.modules.optim import OptimizerConfig
from lit_lm.precision import MixedPrecision
from lit_lm.runs import ResumeError, differences, flatten

# what may change when a run resumes: how fast it runs and how it steps, not what it trains
RESUMABLE_WITH_OTHER = ("optimizer", "compile")


def split_rows(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """[batch, seq, ...] -> [batch * seq // length, length, ...]: every row cut into consecutive windows of
    ``length`` tokens, in order (sequence-length warmup); ``length`` must divide ``seq``."""
    rows, seq = tensor.shape[:2]
    if seq % length:
        raise ValueError(f"sequence-length warmup: a window of {length} tokens does not divide rows of {seq}.")
    return tensor.reshape(rows * (seq // length), length, *tensor.shape[2:])


def split_batch(length: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                *per_token: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """An encoder's batch cut into windows of ``length`` (``split_rows`` on each tensor given, None left None): the
    ids, the attention mask, then any other per-token tensors (labels, token types). A window of padding alone
    attends to itself (its labels are all -100), so that no attention row is empty (NaN)."""
    if attention_mask is not None:
        attention_mask = split_rows(attention_mask, length)
        attention_mask = torch.where(attention_mask.any(dim=1, keepdim=True), attention_mask,
                                     torch.ones_like(attention_mask))
    rest = [None if tensor is None else split_rows(tensor, length) for tensor in per_token]
    return split_rows(input_ids, length), attention_mask, *rest


def split_next_token_labels(labels: torch.Tensor, length: int) -> torch.Tensor:
    """A causal LM's labels [batch, seq] -> [batch * seq // length, length + 1]: each window's ids and the id after
    it, so that the last position of a window keeps the target it has in the whole row (the last window's is -100,
    as the row's); every target of the row appears once. See ``DecoderForCausalLM``."""
    rows, seq = labels.shape
    if seq % length:
        raise ValueError(f"sequence-length warmup: a window of {length} tokens does not divide rows of {seq}.")
    padded = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)
    return padded.unfold(1, length + 1, length).reshape(rows * (seq // length), length + 1)


def check_seq_length(config: TransformerConfig, seq_length: int) -> None:
    """One clear error when ``seq_length`` exceeds the model's position table (only tables limit the length)."""
    if (limit := max_input_length(config)) is not None and seq_length > limit:
        raise ValueError(
            f"data.seq_length ({seq_length}) exceeds the {limit} tokens that model.config.max_position_embeddings "
            f"({config.max_position_embeddings}, minus position_offset) allows; lower the first or raise the "
            f"second (relative positions alone, with position_embedding: none, take any length)."
        )


def forked_random_state(device: torch.device):
    """``torch.random.fork_rng`` over the CPU's stream and, on a GPU, that device's: what is drawn inside (fixed
    validation draws, FLOP-counting masks) leaves the training's random stream as it was."""
    if device.type == "cuda":
        return torch.random.fork_rng(devices=[device.index or 0], device_type=device.type)
    return torch.random.fork_rng(devices=[])


def from_saved(config: TransformerConfig | dict, optimizer: OptimizerConfig | dict
               ) -> tuple[TransformerConfig, OptimizerConfig]:
    """A module's ``config`` and ``optimizer`` arguments as given, or rebuilt from the dicts that checkpoints
    written through the CLI store."""
    return (TransformerConfig(**config) if isinstance(config, dict) else config,
            OptimizerConfig(**optimizer) if isinstance(optimizer, dict) else optimizer)


class PretrainingModule(L.LightningModule):
    """Base of ``MaskedLMModule``, ``CausalLMModule`` and ``SequenceClassificationModule``; a subclass sets
    ``self.model`` and then calls ``self._compile_if(compile)``."""

    config: TransformerConfig
    optimizer_config: OptimizerConfig
    model: torch.nn.Module
    train_length: int | None = None
    """Tokens per sequence the training step trains on: each row of the batch is cut into windows of this length
    (set by ``lit_lm.callbacks.SequenceLengthWarmup``); None trains whole rows. Validation always takes whole rows."""

    _resumed_random_state: dict[str, torch.Tensor] | None = None
    """The random state a checkpoint being resumed was saved in, until rank 0 sets it at the first batch."""

    windows_taken: bool = False
    """Whether a training step asked ``train_windows`` (how SequenceLengthWarmup tells a module that ignores it)."""

    def train_windows(self, seq: int) -> int | None:
        """The window length to cut rows of ``seq`` tokens into in this training step; None: whole rows. A module's
        ``training_step`` that supports a sequence-length warmup calls it and cuts its rows as it says."""
        self.windows_taken = True
        return self.train_length if self.train_length is not None and self.train_length < seq else None

    def save_resolved_hyperparameters(self, ignore: list[str] | None = None, **resolved) -> None:
        """``save_hyperparameters``, then the values ``__init__`` resolved (the config read from a pretrained
        source, ...) over the given ones: under LightningCLI Lightning saves the arguments as the command line gave
        them, so a checkpoint would otherwise rebuild the recipe's architecture instead of the one that trained."""
        self.save_hyperparameters(ignore=ignore, frame=inspect.currentframe().f_back)
        self.hparams.update({key: asdict(value) if is_dataclass(value) else value for key, value in resolved.items()})

    def _compile_if(self, compile: bool) -> None:
        # a compiled function, not a module attribute: the state dict and checkpoints stay those of the plain model
        self._compiled_forward = torch.compile(self.model.forward) if compile else None

    def run_model(self, **inputs) -> LMOutput:
        """The model on ``inputs``, compiled when asked; if compiling fails, say why and go on uncompiled."""
        if self._compiled_forward is not None:
            try:
                return self._compiled_forward(**inputs)
            except Exception as error:  # any compiler failure: fall back to eager, which re-raises real errors
                self._compiled_forward = None
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
                rank_zero_warn(f"model.compile: torch.compile failed ({type(error).__name__}: {reason[:300]}); "
                               "continuing without it. Set model.compile: false to skip the attempt.")
        return self.model(**inputs)

    def training_loss(self, out: LMOutput) -> torch.Tensor:
        """Logs ``train/loss`` and returns what to minimise; hands Sophia its curvature sample when it wants one."""
        self.sample_curvature(out)
        self.log("train/loss", out.loss, prog_bar=True)
        if out.aux_loss is not None:  # mixture of experts: the load-balancing loss trains too
            self.log("train/aux_loss", out.aux_loss)
            return out.loss + out.aux_loss
        return out.loss

    def sampled_losses(self, out) -> list[SampledLoss]:
        """The training loss's terms at targets drawn from the model's own predictions (Sophia's curvature estimate,
        ``lit_lm.modules.curvature``): here a masked LM's cross-entropy over its labelled positions; a module with
        another loss overrides it. The mixture-of-experts term is no likelihood and has none."""
        return [sampled_cross_entropy(out.logits, out.labels)]

    def sample_curvature(self, out) -> None:
        """On every micro-batch of a step that refreshes Sophia's curvature estimate, hand it ``sampled_losses``
        (one more backward each); a no-op for every other optimizer and step."""
        trainer = self._trainer
        optimizer = trainer.optimizers[0] if trainer is not None and trainer.optimizers else None
        if not getattr(optimizer, "curvature_due", False):
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # 16-mixed: sampled gradients scaled as training's
        scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
        for sampled in self.sampled_losses(out):
            optimizer.add_sampled_loss(sampled, scale)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        strategy = type(self._trainer.strategy).__name__ if self._trainer is not None else ""
        if self.optimizer_config.name == "sophia" and ("FSDP" in strategy or "DeepSpeed" in strategy):
            raise ValueError(f"model.optimizer.name=sophia runs on one device or under DDP, not under {strategy}: its "
                             f"curvature estimate takes gradients of the model's own parameters, which {strategy} "
                             f"shards or hands to an optimizer of its own. Train with configs/trainer/ddp.yaml, or "
                             f"pick another optimizer.")
        return self.optimizer_config.build(self.model, fused_allowed=self._fused_optimizer_allowed())

    def _fused_optimizer_allowed(self) -> bool:
        """Lightning's own MixedPrecision plugin refuses to clip gradients beside a fused optimizer (it would unscale
        fp16 gradients too late); lit_lm.precision.MixedPrecision, which lit_lm.cli.Trainer installs, can."""
        trainer = self._trainer
        if trainer is None or not trainer.gradient_clip_val:
            return True
        plugin = trainer.precision_plugin
        if isinstance(plugin, LightningMixedPrecision) and not isinstance(plugin, MixedPrecision):
            rank_zero_warn("model.optimizer: the plain AdamW instead of the fused one, because Lightning's "
                           "MixedPrecision plugin cannot clip gradients beside a fused optimizer; lit_lm.cli.Trainer "
                           "(python train.py) installs lit_lm.precision.MixedPrecision, which can.")
            return False
        return True

    def run_settings(self) -> dict:
        """What a resumed run must share with its checkpoint: the resolved model config and the objective's settings
        (the optimizer and compiling may change)."""
        own = inspect.signature(type(self).__init__).parameters  # hparams from the CLI may hold linked extras
        settings = {key: value for key, value in self.hparams.items()
                    if key in own and key not in (*RESUMABLE_WITH_OTHER, "config")}
        name = self.optimizer_config.name
        # the optimizer's settings may change on resume, not the optimizer: its saved state would not fit another
        # (recorded only when not AdamW, so checkpoints from before the switch existed resume as they did)
        chosen = {} if name == "adamw" else {"optimizer": {"name": name}}
        return {**settings, **chosen, "config": asdict(self.config)}

    def on_train_start(self) -> None:
        """Under DDP every rank was seeded alike (seed_everything), so each would draw the same [MASK] positions and
        dropout for its own rows: ranks after the first continue on a stream of their own, derived from the seed, the
        rank and the step it starts at (rank 0, and a single process, keep theirs; a resumed one takes its
        checkpoint's, in ``on_train_batch_start``)."""
        rank = self.trainer.global_rank
        if rank > 0:
            entropy = [torch.initial_seed(), rank] + ([self.trainer.global_step] if self.trainer.global_step else [])
            torch.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
        if rank > 0 or self.trainer.ckpt_path is None:  # only rank 0's state is saved; a loaded module is no resume
            self._resumed_random_state = None

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """A resumed run's first batch draws its masks, dropout and samples from the random state its checkpoint was
        saved in, as the uninterrupted run did: set here, after the data loader was started (which draws from the
        stream), so that a resumed masked-LM run trains what the uninterrupted one would have."""
        if self._resumed_random_state is not None:
            torch.set_rng_state(self._resumed_random_state["cpu"])
            if "cuda" in self._resumed_random_state and self.device.type == "cuda":  # masks drawn on the GPU
                torch.cuda.set_rng_state(self._resumed_random_state["cuda"], self.device)
            self._resumed_random_state = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the run settings (for resume checks), the run's tokenizer, so generation, evaluation and fine-tuning
        need nothing else, and the random state (CPU, and this GPU's) that the next training batch draws from."""
        checkpoint["run_settings"] = self.run_settings()
        checkpoint["random_state"] = {"cpu": torch.get_rng_state(), **(
            {"cuda": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {})}
        tokenizer = self.run_tokenizer()
        if tokenizer is not None:
            checkpoint["tokenizer"] = tokenizer.to_str()

    def run_tokenizer(self):
        """The run's ``tokenizers.Tokenizer``: the module's own (``self.tokenizer``, fine-tuning), else the data
        module's (pretraining); None when neither has one."""
        own = getattr(self, "tokenizer", None)
        if own is not None:
            return own
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(datamodule, "tokenizer", None)

    def resume_differences(self, checkpoint: dict) -> list[str]:
        """One line per model setting in which ``checkpoint`` was trained otherwise than this module would train."""
        saved = checkpoint.get("run_settings")
        return [] if saved is None else differences(saved, self.run_settings(), "model.init_args")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Fail with one clear message, not a shape traceback, when the checkpoint's model differs from this one:
        naming the differing settings, and the shape that does not fit. Keep its random state for the resume."""
        saved = checkpoint.get("random_state")
        self._resumed_random_state = saved if isinstance(saved, dict) else None
        lines = self.resume_differences(checkpoint)
        own = self.state_dict()
        lines += [f"{name}: {tuple(tensor.shape)} in the checkpoint, {tuple(own[name].shape)} here"
                  for name, tensor in checkpoint.get("state_dict", {}).items()
                  if name in own and own[name].shape != tensor.shape][:1]
        if not lines:
            return
        saved_vocab = flatten(checkpoint.get("hyper_parameters", {})).get("config.vocab_size")
        hint = ""
        if saved_vocab is not None and saved_vocab != self.config.vocab_size:
            hint = (f"\nThe checkpoint has a vocabulary of {saved_vocab} tokens but the tokenizer now has "
                    f"{self.config.vocab_size}: resume with the data and tokenizer settings it was trained with.")
        raise ResumeError("checkpoint does not fit this model:\n  " + "\n  ".join(lines) + hint)

    def _step_flops(self, forward: Callable[[], LMOutput]) -> int:
        """FLOPs of ``forward()`` and the backward of its loss (Lightning's ``measure_flops``), leaving the
        gradients as they were."""
        params = list(self.model.parameters())
        grads = [p.grad for p in params]  # set aside, so the measuring backward cannot add to them
        for param in params:
            param.grad = None
        with sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention kernels escape the FLOP counter
            flops = measure_flops(self.model, forward, loss_fn=lambda out: out.loss)
        for param, grad in zip(params, grads):
            param.grad = grad
        return flops
