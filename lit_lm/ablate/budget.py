"""What every run of an ablation gets: a budget of wall-clock minutes (``--minutes``) or of optimizer steps
(``--steps``), and the ``train.py`` words, table text, JSON entry and progress-bar unit each implies.

A budget of steps makes a comparison independent of the machine's speed (and of what else it is doing): every run
trains exactly N optimizer steps with its schedules keyed to them, and the training time is still measured
(``TrainingClock``) for the tokens/s column and the loss-against-time plot. A new kind is one more ``KINDS`` entry
and its branch in each property below.
"""

import math
from dataclasses import dataclass

from lightning.pytorch.callbacks import Timer

KINDS = ("minutes", "steps")


@dataclass(frozen=True)
class Budget:
    """The budget of every run: ``kind`` "minutes" (wall-clock training time, the budget clock) or "steps"
    (optimizer steps), and its ``value``."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"a budget is one of {', '.join(KINDS)}, not {self.kind!r}.")
        if self.kind == "steps" and (int(self.value) != self.value or self.value < 1):
            raise ValueError(f"--steps must be a whole number >= 1, got {self.value}.")
        if not self.value > 0:
            raise ValueError(f"--{self.kind} must be > 0, got {self.value}.")
        if self.kind == "steps":
            object.__setattr__(self, "value", int(self.value))

    @classmethod
    def from_json(cls, saved: dict) -> "Budget":
        """``to_json``'s dict; a manifest written before budgets had kinds holds only ``minutes``."""
        if "budget" in saved:
            return cls(saved["budget"]["kind"], saved["budget"]["value"])
        return cls("minutes", saved["minutes"])

    def to_json(self) -> dict:
        return {"kind": self.kind, "value": self.value}

    @property
    def minutes(self) -> float | None:
        """The minutes of a wall-clock budget (results.json's ``minutes``), None for another kind."""
        return self.value if self.kind == "minutes" else None

    @property
    def seconds(self) -> int | None:
        """The training seconds of a wall-clock budget (at least one), None for another kind."""
        return max(1, round(self.value * 60)) if self.kind == "minutes" else None

    @property
    def max_time(self) -> str | None:
        """``trainer.max_time`` of a wall-clock budget, DD:HH:MM:SS."""
        s = self.seconds
        return None if s is None else f"{s // 86400:02d}:{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}"

    def train_words(self) -> list[str]:
        """The ``train.py`` words that set this budget (a run's other words come after them). A budget of steps also
        removes the recipe's ``max_time`` (so time cannot end the run first, nor move its schedules) and adds the
        ``TrainingClock`` (a ``Timer`` of its own: Lightning would ignore a ``max_time`` beside it anyway)."""
        if self.kind == "minutes":
            return [f"--trainer.max_time={self.max_time}"]
        return [f"--trainer.max_steps={self.value}", "--trainer.max_time=null",
                "--trainer.callbacks+=lit_lm.ablate.budget.TrainingClock"]

    @property
    def option(self) -> list[str]:
        """The command-line words that give this budget: ``--minutes 10`` or ``--steps 500``."""
        return [f"--{self.kind}", f"{self.value:g}" if self.kind == "minutes" else str(self.value)]

    @property
    def per_run(self) -> str:
        """Short, for the plots' title and the runner's first line: "10 min" or "500 steps"."""
        return f"{self.value:g} min" if self.kind == "minutes" else f"{self.value} steps"

    @property
    def sentence(self) -> str:
        """What every run trained for, in the table's opening sentence."""
        if self.kind == "minutes":
            return f"{self.value:g} min of training time (the budget clock; data preparation outside it)"
        return (f"{self.value} optimizer steps (a budget of steps: the same work whatever the machine's speed; the "
                f"training time is measured, not limited)")

    @property
    def bar_units(self) -> int:
        """What one run adds to the progress bar: its budget-seconds or its steps."""
        return self.seconds if self.kind == "minutes" else self.value

    @property
    def bar_unit(self) -> str:
        return "budget-s" if self.kind == "minutes" else "steps"


class TrainingClock(Timer):
    """Lightning's ``Timer`` with no limit, for a budget of steps: it counts the training seconds (saved in
    checkpoints, restored on resume) without ever stopping a run. Its remaining time is infinite, so
    ``lit_lm.callbacks.HeldOutLoss`` takes it for the budget clock (it logs its seconds beside each score and pauses
    it while scoring) while the time share of ``lit_lm.callbacks.progress`` stays exactly 0: the step limit alone
    moves the schedules."""

    def __init__(self) -> None:
        super().__init__(duration=None, verbose=False)

    def time_remaining(self, stage: str = "train") -> float:
        return math.inf
