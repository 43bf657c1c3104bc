"""What every lit-lm pretraining LightningModule shares: compiling with a fallback, the training loss with its
mixture-of-experts term, AdamW with decay groups, a clear checkpoint check, and FLOP counting for MFU."""

from collections.abc import Callable

import lightning as L
import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.utilities import rank_zero_warn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lit_lm.models.config import TransformerConfig
from lit_lm.models.output import LMOutput
from lit_lm.modules.optim import OptimizerConfig


class PretrainingModule(L.LightningModule):
    """Base of ``MaskedLMModule`` and ``CausalLMModule``; a subclass sets ``self.model`` and then calls
    ``self._compile_if(compile)``."""

    config: TransformerConfig
    optimizer_config: OptimizerConfig
    model: torch.nn.Module

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
        """Logs ``train/loss`` and returns what to minimise."""
        self.log("train/loss", out.loss, prog_bar=True)
        if out.aux_loss is not None:  # mixture of experts: the load-balancing loss trains too
            self.log("train/aux_loss", out.aux_loss)
            return out.loss + out.aux_loss
        return out.loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainer = self._trainer
        # a fused AdamW unscales fp16 gradients inside its step, too late for Lightning to clip them first
        fused_allowed = trainer is None or not (str(trainer.precision) == "16-mixed" and trainer.gradient_clip_val)
        return self.optimizer_config.build(self.model, fused_allowed=fused_allowed)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Fail with one clear message, not a shape traceback, when the checkpoint's model differs from this one."""
        own = self.state_dict()
        for name, tensor in checkpoint.get("state_dict", {}).items():
            if name in own and own[name].shape != tensor.shape:
                saved = checkpoint.get("hyper_parameters", {}).get("config")
                saved_vocab = (saved.get("vocab_size") if isinstance(saved, dict)
                               else getattr(saved, "vocab_size", None))
                hint = ""
                if saved_vocab is not None and saved_vocab != self.config.vocab_size:
                    hint = (f" The checkpoint has a vocabulary of {saved_vocab} tokens but the tokenizer now has "
                            f"{self.config.vocab_size}: resume with the data and tokenizer settings it was "
                            f"trained with.")
                raise ValueError(
                    f"checkpoint does not fit this model: {name} is {tuple(tensor.shape)} in the checkpoint but "
                    f"{tuple(own[name].shape)} here.{hint}"
                )

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
