"""A sequence length that grows during training, without changing the data: short windows early, whole rows later."""

import math
from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lit_lm.callbacks.progress import ProgressKey, training_progress

WarmupMode = Literal["linear", "stepped"]


class SequenceLengthWarmup(Callback):
    """Trains on short sequences first and on the full length from ``warmup_fraction`` of the run on (sequence-length
    warmup, Li et al. 2022, "The Stability-Efficiency Dilemma"; the essay's "short sequences first").

    The data are untouched: they still yield packed rows of the full length L, in the same order, so exactly-once
    reading and resuming stay as they are. During the warmup the module cuts every row into L / length consecutive
    windows of ``length`` tokens and trains on those as separate sequences (``PretrainingModule.train_length``):
    every token is trained exactly once, in a shorter context. Masked-LM masks the row before cutting it, and only
    a row's first window starts with [CLS] (the others start mid-text, as rows packed across documents do); causal-LM
    gives each window the id after it as its last target, so no next-token target is lost at a cut
    (``split_next_token_labels``). ``train/tokens_seen`` counts the same tokens either way.

    The lengths are ``start_length`` doubled until L (so L / start_length must be a power of two): with L = 128 and
    ``start_length`` 32, windows of 32, then 64, then whole rows. 'linear' follows a length growing linearly from
    ``start_length`` to L over the warmup, rounded down to those lengths (Li et al.'s linear pacing); 'stepped' spends
    an equal share of the warmup at each length. The length changes only at the first micro-batch of an accumulation
    window (one optimizer step, one length). It is a pure function of progress (``lit_lm.callbacks.progress``), so a
    resumed run continues the schedule; it is logged as ``train/seq_length``. Validation always takes whole rows.
    A compiled model (model.compile) compiles once per length.

    Args:
        start_length: Tokens per sequence at the start; L / start_length must be a power of two (L: data.seq_length).
        warmup_fraction: Fraction of the run (see ``key``) after which whole rows are trained.
        mode: 'linear' or 'stepped' (see above).
        key: Which clock drives the schedule: 'auto' (whichever limit ends the run), 'steps' or 'time' (the budget).
    """

    def __init__(self, start_length: int = 32, warmup_fraction: float = 0.3, mode: WarmupMode = "linear",
                 key: ProgressKey = "auto") -> None:
        if start_length < 1:
            raise ValueError(f"SequenceLengthWarmup.start_length must be >= 1, got {start_length}.")
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"SequenceLengthWarmup.warmup_fraction must be in [0, 1], got {warmup_fraction}.")
        if mode not in ("linear", "stepped"):
            raise ValueError(f"SequenceLengthWarmup.mode must be 'linear' or 'stepped', got {mode!r}.")
        if key not in ("auto", "steps", "time"):
            raise ValueError(f"SequenceLengthWarmup.key must be 'auto', 'steps' or 'time', got {key!r}.")
        self.start_length, self.warmup_fraction, self.mode, self.key = start_length, warmup_fraction, mode, key
        self.length: int | None = None  # the length in force, once the first batch is seen

    def lengths(self, full: int) -> list[int]:
        """The lengths the schedule goes through for rows of ``full`` tokens: start_length, doubled, ..., full."""
        ratio, rest = divmod(full, self.start_length)
        if rest or ratio < 1 or ratio & (ratio - 1):  # a power of two has a single bit set
            options = [full >> i for i in range(1, 5) if full % (1 << i) == 0]
            raise ValueError(
                f"SequenceLengthWarmup.start_length ({self.start_length}) must be data.seq_length ({full}) divided by "
                f"a power of two, so that every row cuts into whole windows; e.g. "
                f"{', '.join(map(str, options)) or full}."
            )
        return [self.start_length << i for i in range(ratio.bit_length())]

    def length_at(self, progress: float, full: int) -> int:
        """The sequence length the schedule asks for at ``progress`` in [0, 1], for rows of ``full`` tokens."""
        lengths = self.lengths(full)
        ramp = 1.0 if self.warmup_fraction == 0 else min(max(progress, 0.0) / self.warmup_fraction, 1.0)
        if self.mode == "stepped":
            stages = len(lengths) - 1
            return lengths[min(stages, math.floor(stages * ramp + 1e-9))]
        target = self.start_length + (full - self.start_length) * ramp
        return max(length for length in lengths if length <= target + 1e-9)

    # ---- Lightning hooks ----
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "train_windows"):  # a LightningModule that is not a lit-lm pretraining module
            raise ValueError(f"SequenceLengthWarmup needs a lit-lm pretraining module (MaskedLMModule, "
                             f"CausalLMModule, ReplacedTokenDetectionModule), got {type(pl_module).__name__}.")
        training_progress(trainer, self.key, "SequenceLengthWarmup")  # fail now if there is no limit to key it to
        full = getattr(pl_module, "hparams", {}).get("seq_length")
        if isinstance(full, int):
            self.lengths(full)  # fail now on a start_length that does not divide the rows
        self.length = None  # set again at the first batch (also after a resume)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.length is not None and batch_idx % trainer.accumulate_grad_batches:
            return  # inside an accumulation window: one optimizer step, one length
        full = int(batch["input_ids"].shape[1])
        length = self.length_at(training_progress(trainer, self.key, "SequenceLengthWarmup"), full)
        if length == full and self.length is not None and self.length < full:
            rank_zero_info(f"SequenceLengthWarmup: whole rows of {full} tokens from step {trainer.global_step} on")
        self.length = length
        pl_module.train_length = None if length == full else length
        pl_module.windows_taken = False
        pl_module.log("train/seq_length", float(length))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if pl_module.train_length is not None and not pl_module.windows_taken:
            raise ValueError(f"SequenceLengthWarmup: {type(pl_module).__name__}.training_step trains whole rows (it "
                             f"never calls train_windows); remove the callback, or cut the rows as MaskedLMModule "
                             f"does.")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.train_length = None
