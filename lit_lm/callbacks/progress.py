"""How far a run is through its budget: the one clock that the learning-rate and batch-size schedules read.

A run ends at whichever of its limits comes first: ``trainer.max_time`` (the wall-clock budget, kept by Lightning's
own ``Timer``, whose elapsed time is saved in checkpoints and restored on resume), ``trainer.max_steps`` (optimizer
steps) or ``trainer.max_epochs`` over a sized dataset (micro-batches). Progress is the fraction of such a limit used,
so a schedule keyed to it reaches its end exactly when training does, whatever the batch size does meanwhile.
Everything here is a pure function of the trainer's restored state, so resuming needs no extra bookkeeping.
"""

import math
from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import Timer

ProgressKey = Literal["auto", "steps", "time"]
"""'steps': optimizer steps over trainer.max_steps, or micro-batches over max_epochs x batches per epoch (the larger);
'time': elapsed wall-clock time over trainer.max_time; 'auto': the larger of both, i.e. of whichever limit ends the run."""


def budget_timer(trainer: L.Trainer) -> Timer | None:
    """Lightning's ``Timer`` that enforces ``trainer.max_time`` (or one added by hand with a duration), if any."""
    for callback in trainer.callbacks:
        if isinstance(callback, Timer) and callback.time_remaining() is not None:
            return callback
    return None


def time_progress(trainer: L.Trainer) -> float | None:
    """Fraction of the wall-clock budget used, the same on every rank (rank 0's clock); None without a budget."""
    timer = budget_timer(trainer)
    if timer is None:
        return None
    elapsed = timer.time_elapsed()
    budget = elapsed + timer.time_remaining()
    if trainer.world_size > 1:  # ranks must agree, or their schedules (and accumulation windows) would drift apart
        elapsed = trainer.strategy.broadcast(elapsed, src=0)
    return elapsed / budget if budget > 0 else 1.0


def step_progress(trainer: L.Trainer) -> float | None:
    """Fraction of ``max_steps`` or of all training micro-batches done (the larger); None without either limit."""
    fractions = []
    if trainer.max_steps is not None and trainer.max_steps > 0:
        fractions.append(trainer.global_step / trainer.max_steps)
    batches, epochs = trainer.num_training_batches, trainer.max_epochs
    if epochs is not None and epochs > 0 and math.isfinite(batches) and batches > 0:
        done = max(0, trainer.fit_loop.total_batch_idx)  # micro-batches finished before the current one
        fractions.append(done / (batches * epochs))
    return max(fractions) if fractions else None


def training_progress(trainer: L.Trainer, key: ProgressKey = "auto", owner: str = "schedule") -> float:
    """Progress through the run in [0, 1], keyed as ``key`` says; a clear error when that limit is not set."""
    if key not in ("auto", "steps", "time"):
        raise ValueError(f"{owner}.key must be 'auto', 'steps' or 'time', got {key!r}.")
    by_time = time_progress(trainer) if key in ("auto", "time") else None
    by_steps = step_progress(trainer) if key in ("auto", "steps") else None
    known = [p for p in (by_time, by_steps) if p is not None]
    if not known:
        needs = {
            "time": "a wall-clock budget: set trainer.max_time (DD:HH:MM:SS, e.g. 00:00:10:00)",
            "steps": "a step limit: set trainer.max_steps, or trainer.max_epochs with a dataset of known length",
            "auto": "a budget: set trainer.max_time, trainer.max_steps, or trainer.max_epochs with a sized dataset",
        }[key]
        raise ValueError(f"{owner} (key={key!r}) needs {needs}.")
    return min(max(max(known), 0.0), 1.0)
