"""A run's loggers: the CSV logger and wandb side by side in the run's folder, the lines that say where a run's files
and dashboard are, and one wandb run across a resume.

configs/base/trainer.yaml gives every recipe both loggers. Neither names a folder: lit-lm's Trainer points every
logger left without one at ``trainer.default_root_dir`` (``place_in_run_folder``), so a recipe sets its run folder
once and the CSV logs land in ``runs/<recipe>/logs/version_N`` and wandb's files in ``runs/<recipe>/wandb``. The
``RunDashboard`` callback, which the trainer adds itself, prints where both are when fit starts, puts the parameter
count and the data card in the wandb run's summary, and keeps the wandb run's id in every checkpoint, so that
``--ckpt_path last`` continues the same wandb run (``continue_wandb_run``).
"""

import os
import sys
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

CHECKPOINT_KEY = "wandb_run_id"  # in every checkpoint of a run logged to wandb
WANDB_DEFAULT_SAVE_DIR = "."  # Lightning's WandbLogger default, which would write ./wandb wherever a run starts


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger whose ``save_dir`` may be left out: lit-lm's Trainer then places it in the run folder,
    ``trainer.default_root_dir``. Metrics go to ``<save_dir>/<name>/version_N/metrics.csv``."""

    def __init__(self, save_dir: Optional[_PATH] = None, name: str = "logs", version: Optional[Union[int, str]] = None,
                 prefix: str = "", flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir if save_dir is not None else ".", name, version, prefix, flush_logs_every_n_steps)
        self.in_run_folder = save_dir is None

    def place_in(self, run_dir: _PATH) -> None:
        """Log into ``run_dir`` instead of the current folder; for a logger built without a ``save_dir``, before it
        has logged anything."""
        LightningCSVLogger.__init__(self, run_dir, self._name, self._version, self._prefix,
                                    self._flush_logs_every_n_steps)


def place_in_run_folder(loggers: list, run_dir: _PATH) -> None:
    """Loggers built without a folder of their own write into ``run_dir`` (the trainer's ``default_root_dir``):
    lit-lm's CSVLogger without a ``save_dir``, and Lightning's WandbLogger left at its default ``save_dir`` ``.``
    (which would write ``./wandb`` wherever a run starts). The config keeps saying what the recipe said."""
    for logger in loggers:
        if isinstance(logger, CSVLogger) and logger.in_run_folder:
            logger.place_in(run_dir)
        elif isinstance(logger, WandbLogger) and logger._experiment is None and (
                logger._save_dir == logger._wandb_init.get("dir") == WANDB_DEFAULT_SAVE_DIR):
            logger._save_dir = logger._wandb_init["dir"] = os.fspath(run_dir)


def is_wandb(logger_config: Any) -> bool:
    """Whether a logger config (a ``class_path`` namespace) builds Lightning's WandbLogger or a subclass of it."""
    class_path = str(getattr(logger_config, "class_path", ""))
    return class_path.rsplit(".", 1)[-1] == "WandbLogger"


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def before_wandb_starts(trainer: L.Trainer, resume_id: Optional[str] = None) -> None:
    """Ready the trainer's wandb loggers before their runs start: their folders exist (wandb would otherwise warn
    about a missing git root), Lightning's unused ``anonymous`` argument does not reach wandb (which warns about it
    even when unset), and, given ``resume_id``, they continue that wandb run."""
    for logger in wandb_loggers(trainer):
        if logger.save_dir:
            Path(logger.save_dir).mkdir(parents=True, exist_ok=True)
        if logger._wandb_init.get("anonymous") is None:
            logger._wandb_init.pop("anonymous", None)
        if resume_id is not None:
            continue_wandb_run(logger, resume_id)


def continue_wandb_run(logger: WandbLogger, run_id: str) -> None:
    """Make ``logger`` log into the wandb run ``run_id`` (resumed when it exists, created with that id when not)
    instead of a new one. Only before the logger's run has started: afterwards it says so and changes nothing."""
    if logger._experiment is not None:
        if logger.version != run_id:
            rank_zero_warn(f"wandb: the run {logger.version} has already started, so the resumed part is not logged "
                           f"into the checkpoint's wandb run {run_id}.")
        return
    logger._wandb_init.update(id=run_id, resume="allow")
    logger._id = run_id


def finish_wandb_run(exit_code: int = 0) -> None:
    """End this process's wandb run, if one is going: its summary and config are written, and a later run in the
    same process starts a run of its own. ``train.py`` calls it when a run ends; Lightning leaves it to wandb's exit
    hook, which does not always finish an offline run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def stored_wandb_run_id(checkpoint: dict) -> Optional[str]:
    """The wandb run id that ``RunDashboard`` kept in a loaded checkpoint, or None."""
    return checkpoint.get(CHECKPOINT_KEY)


class RunDashboard(Callback):
    """Says where a run's files and dashboard are when fit starts, puts the parameter count and data card in the
    wandb run's summary, and keeps the wandb run's id in checkpoints so that a resumed run continues it.

    lit-lm's Trainer adds it to every run; it is not a recipe setting.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Trainer.log_dir broadcasts rank 0's folder under DDP: a collective, so every rank asks (asked on rank 0
        # alone, it pairs with the next broadcast of the other ranks, and the run hangs)
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            for line in run_lines(trainer, folder):
                rank_zero_info(line)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        summary: dict[str, Any] = {"params": sum(p.numel() for p in pl_module.parameters())}
        card = getattr(trainer.datamodule, "card", None)
        if card:
            summary["data_card"] = card
        for logger in wandb_loggers(trainer):
            logger.experiment.summary.update(summary)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # the id only, never the experiment: on ranks other than zero the wandb run does not exist
        ids = [logger.version for logger in wandb_loggers(trainer) if logger.version]
        if ids:
            checkpoint[CHECKPOINT_KEY] = ids[0]


def run_lines(trainer: L.Trainer, folder: Path) -> list[str]:
    """``run: <folder> (what it holds)`` and ``dashboard: ...``: where a run's files (``folder``, the trainer's
    log_dir) and its wandb run are."""
    first = trainer.loggers[0] if trainer.loggers else None
    holds = []
    if any(type(cb).__name__ == "SaveRunConfig" for cb in trainer.callbacks) and not isinstance(first, WandbLogger):
        holds.append("config.yaml")  # SaveRunConfig writes a wandb-first run's config into the wandb run's files
    if isinstance(first, LightningCSVLogger):
        holds.append("metrics.csv")
    checkpoints = checkpoint_dir(trainer)
    if checkpoints is not None and checkpoints.parent == folder:
        holds.append(f"{checkpoints.name}/")
    lines = [f"run: {folder}" + (f" ({', '.join(holds)})" if holds else "")]
    if checkpoints is not None and checkpoints.parent != folder:
        lines.append(f"checkpoints: {checkpoints}")
    lines += [dashboard_line(logger) for logger in wandb_loggers(trainer)]
    if not wandb_loggers(trainer):
        lines.append("dashboard: none (trainer.logger has no WandbLogger)")
    return lines


def checkpoint_dir(trainer: L.Trainer) -> Optional[Path]:
    """Where the trainer's ModelCheckpoint will write, before its own setup resolves it: its ``dirpath``, else
    Lightning's rule, ``<first logger's save_dir>/<name>/<version>/checkpoints`` (``<default_root_dir>/checkpoints``
    without a logger); None without a checkpoint callback."""
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    if getattr(callback, "dirpath", None):
        return Path(callback.dirpath)
    if not trainer.loggers:
        return Path(trainer.default_root_dir) / "checkpoints"
    logger = trainer.loggers[0]
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version / "checkpoints"


def dashboard_line(logger: WandbLogger) -> str:
    """Where a wandb logger's run is: its URL online; its folder and the upload command offline."""
    run = logger.experiment
    mode = getattr(run.settings, "mode", None)
    if mode == "disabled":
        return "dashboard: none (wandb is disabled: WANDB_MODE=disabled)"
    if run.offline:
        folder = Path(run.dir).parent  # <save_dir>/wandb/offline-run-<time>-<id>/files
        return f"dashboard: wandb offline run {run.id} in {folder.parent}; upload with: wandb sync {folder}"
    group = f", group {run.group}" if run.group else ""
    return f"dashboard: wandb run {run.name} ({run.id}{group}) at {run.url}"
