"""A callback that holds one run of an ablation at a given optimizer step until Ctrl-C reaches it: the test presses
Ctrl-C at a known step instead of racing a run that may already have finished."""

import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class PauseAt(Callback):
    """In the run whose ``trainer.default_root_dir`` contains ``run``, after optimizer step ``step``: writes ``flag``
    and waits there (Ctrl-C ends the wait as it ends training). Only once: with ``flag`` already written (the resumed
    run) it does nothing. ``limit`` seconds only guard against a test that never presses Ctrl-C."""

    def __init__(self, step: int, run: str, flag: str, limit: float = 300.0) -> None:
        self.step, self.run, self.flag, self.limit = step, run, Path(flag), limit

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step or self.run not in str(trainer.default_root_dir) or self.flag.exists():
            return
        self.flag.write_text(f"{trainer.global_step}\n")
        deadline = time.monotonic() + self.limit
        while time.monotonic() < deadline:
            time.sleep(0.05)
        raise RuntimeError(f"PauseAt: no Ctrl-C came within {self.limit} s")
