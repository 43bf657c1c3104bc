"""What a precision really did during a fit, recorded from inside it: the autocast state and the dtype of every Linear
layer's output in the training steps' forwards, the loss each backward received and the gradient scaler's scale at
that moment, and the gradients before and after the plugin unscaled them. ``check(trainer, precision)`` asserts that
they match the precision the trainer claims. A plugin that drops autocast (or autocasts to the other dtype), runs
fp16 without its scaler, scales the loss but hands backward the unscaled one, lets the optimizer see scaled
gradients, or never backs the scale off after an overflow fails it, where a test that reads only the precision
string passes."""

import contextlib
import functools
from unittest import mock

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

import lit_lm.cli
from lit_lm.precision import MixedPrecision

COMPUTE_DTYPE = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@contextlib.contextmanager
def joining(*callbacks: Callback):
    """Inside it, ``train.py``'s CLI (``lit_lm.cli.main``) runs unchanged but for ``callbacks``, given to LitLMCLI as
    trainer defaults: LightningCLI appends them to the recipe's callbacks, and the saved config holds the recipe's
    alone."""
    cli = functools.partial(lit_lm.cli.LitLMCLI, trainer_defaults={"callbacks": list(callbacks)})
    with mock.patch.object(lit_lm.cli, "LitLMCLI", cli):
        yield


def gradients(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in module.parameters() if p.grad is not None]


class PrecisionProbe(Callback):
    """Records what the precision plugin did; appended to a trainer's callbacks, or joined to a CLI run's."""

    def __init__(self) -> None:
        self.linears: list[tuple[bool, torch.dtype, torch.dtype, torch.dtype]] = []
        """Each Linear call inside ``training_step``: (autocast on, autocast dtype, output dtype, weight dtype)."""
        self.backwards: list[tuple[torch.Tensor, float]] = []  # the loss backward received, the scale then
        self.step_losses: list[torch.Tensor] = []  # what training_step returned, divided by the accumulation
        self.unscaled: list[dict] = []  # per optimizer step: the scale, whether the gradients were exactly unscaled
        self._after_backward: list[torch.Tensor] = []
        self._in_step = False
        self._handles: list = []
        self._wrapped = None

    def _scale(self, trainer) -> float:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        return 1.0 if scaler is None else float(scaler.get_scale())

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Hooks on every Linear layer, recording only inside ``training_step`` (which Lightning runs inside the
        plugin's forward context); the FLOP count of a throughput callback runs outside it, validation in eval mode."""
        def record(module, inputs, output) -> None:
            if self._in_step and isinstance(output, torch.Tensor):
                self.linears.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), output.dtype,
                                     module.weight.dtype))

        self._handles = [m.register_forward_hook(record) for m in pl_module.modules() if isinstance(m, nn.Linear)]
        step = self._wrapped = pl_module.training_step

        def training_step(*args, **kwargs):
            self._in_step = True
            try:
                return step(*args, **kwargs)
            finally:
                self._in_step = False

        pl_module.training_step = training_step

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for handle in self._handles:
            handle.remove()
        if self._wrapped is not None:
            del pl_module.training_step  # the class's own again
            self._wrapped = None

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.backwards.append((loss.detach().clone(), self._scale(trainer)))

    def on_after_backward(self, trainer, pl_module) -> None:
        self._after_backward = gradients(pl_module)  # the last micro-batch's: the window's summed gradients

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Called after the plugin unscaled the gradients (and before clipping): they must be exactly the gradients
        the backward left divided by the scale, a power of two (exact in float32). The unscaling multiplies every
        element, overflowed ones too (inf stays inf; the scaler then skips the step), so the comparison holds in a
        step that overflowed as well; whether one did is recorded."""
        scale, now, before = self._scale(trainer), gradients(pl_module), self._after_backward
        same = len(now) == len(before) and all(
            torch.allclose(g * scale, b, rtol=0, atol=0, equal_nan=True) for g, b in zip(now, before))
        overflowed = not all(torch.isfinite(b).all() for b in before)
        compared = sum(int((torch.isfinite(b) & (b != 0)).sum()) for b in before)  # elements that tell
        self.unscaled.append(dict(scale=scale, same=same, overflowed=overflowed, compared=compared))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step_losses.append(outputs["loss"].detach().clone())

    def check(self, trainer, precision: str) -> None:
        """The recorded fit computed in ``precision``'s dtype, and under 16-mixed scaled and unscaled its loss."""
        dtype = COMPUTE_DTYPE[precision]
        assert trainer.precision == precision
        assert self.linears, "no Linear layer ran inside a training step"
        autocast = precision != "32-true"
        assert {enabled for enabled, *_ in self.linears} == {autocast}, f"autocast should be {autocast}"
        if autocast:
            assert isinstance(trainer.precision_plugin, MixedPrecision), trainer.precision_plugin
            autocast_dtypes = {autocast_dtype for _, autocast_dtype, _, _ in self.linears}
            assert autocast_dtypes == {dtype}, f"autocast to {autocast_dtypes}, not {dtype}"
        outputs, weights = {output for _, _, output, _ in self.linears}, {weight for *_, weight in self.linears}
        assert outputs == {dtype}, f"the Linear layers computed in {outputs}, not {dtype}"
        assert weights == {torch.float32}, weights  # mixed precision: the weights stay fp32
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        assert (scaler is not None) == (precision == "16-mixed"), f"a gradient scaler under {precision}: {scaler}"
        assert self.backwards and len(self.backwards) == len(self.step_losses)
        scales = {scale for _, scale in self.backwards}
        assert (scales == {1.0}) if scaler is None else (min(scales) > 1), scales
        for (handed, scale), loss in zip(self.backwards, self.step_losses):
            # exact: the scale is a power of two
            assert torch.equal(handed, loss * scale), f"backward received {handed}, not the loss {loss} x {scale}"
        assert self.unscaled and all(step["same"] for step in self.unscaled), \
            f"the optimizer saw gradients other than the backward's divided by the scale: {self.unscaled}"
        assert sum(step["compared"] for step in self.unscaled) > 0, "no finite non-zero gradient was compared"
        if scaler is not None:  # it updated after every step: it halves the scale after one whose gradients
            # overflowed (and skips it), and keeps it after one that did not (it grows after 2000 in a row)
            for step, after in zip(self.unscaled, self.unscaled[1:]):
                assert after["scale"] == step["scale"] * (0.5 if step["overflowed"] else 1.0), self.unscaled
