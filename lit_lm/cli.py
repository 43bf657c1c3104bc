"""The command line: LightningCLI with lit-lm's argument links, precision, run folders, config saving, recipes that
build on shared base files, and loggers in the run folder (wandb offline without credentials)."""

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Literal, Optional, Union
from unittest import mock
from urllib.parse import urlparse

import lightning as L
import yaml
from jsonargparse import ActionConfigFile, set_parsing_settings
from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins import _PLUGIN_INPUT
from lightning.pytorch.utilities import rank_zero_info

from lit_lm.callbacks.nonfinite import NonFiniteLossError
from lit_lm.checkpoint import CheckpointError
from lit_lm.data.sources import CorpusError
from lit_lm.data.tokenizer import TokenizerError
from lit_lm.loggers import (RunDashboard, before_wandb_starts, finish_wandb_run, is_wandb, place_in_run_folder,
                            stored_wandb_run_id)
from lit_lm.precision import AUTO, auto_precision, precision_plugin, setting_name
from lit_lm.pretrained import PretrainedSourceError
from lit_lm.recipe_bases import CONFIG_HELP, RecipeError, RecipeParser
from lit_lm.runs import (DISK_FULL, DiskFullError, ResumeError, check_resume, disk_space_for, find_last_checkpoint,
                         read_checkpoint)

PACKAGE = Path(__file__).resolve().parent


class SettingError(ValueError):
    """A setting with a value no run can use; the message names the setting and what to write instead."""

# Field docstrings of the config dataclasses become the --help text.
set_parsing_settings(docstring_parse_attribute_docstrings=True)

# Lightning's notes that are not the user's business stay out of a run's output: a deprecation inside Lightning
# itself, the model summary's size estimate under mixed precision, a run-folder change on resume, a logging plug-in tip.
for note in (r".*isinstance\(treespec, LeafSpec\)", r"Precision .* is not supported by the model summary",
             r"The dirpath has changed from"):
    warnings.filterwarnings("ignore", message=note)
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage())

# What the tokenizer and the data decide, flowing into the model when both are instantiated (a link whose data
# attribute does not exist, such as num_labels for pretraining data, is skipped).
DATA_TO_MODEL_LINKS = {
    "data.vocab_size": "model.init_args.config.vocab_size",
    "data.pad_token_id": "model.init_args.config.pad_token_id",
    "data.special_token_ids": "model.init_args.special_token_ids",
    "data.mask_token_id": "model.init_args.mask_token_id",
    "data.seq_length": "model.init_args.seq_length",
    "data.eos_token_id": "model.init_args.eos_token_id",
    "data.num_labels": "model.init_args.num_labels",  # fine-tuning: the task decides the head and its metric
    "data.metric": "model.init_args.metric",
}


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return host in netrc.read_text()
    except OSError:
        return False


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved config into the run's own folder, and logs it to the experiment dashboard.

    Lightning's default writes ``config.yaml`` to ``trainer.log_dir``, which for the wandb logger is the shared
    save_dir, so a second run would clash with the first. Here each run writes to the folder of its first logger:
    the CSV/TensorBoard version folder, or the wandb run's files folder (uploaded with the run). The config goes to
    every logger's hyperparameters (wandb's run config, the CSV logger's hparams.yaml).
    """

    def __init__(self, parser, config, config_filename: str = "config.yaml", **kwargs) -> None:
        kwargs.update(overwrite=True, save_to_log_dir=False)
        super().__init__(parser, config, config_filename, **kwargs)

    def run_dir(self, trainer: L.Trainer) -> Path:
        logger = trainer.logger
        if isinstance(logger, WandbLogger):  # a disabled wandb run's folder is a temporary one: the save_dir instead
            disabled = getattr(logger.experiment.settings, "mode", None) == "disabled"
            return Path(logger.save_dir or trainer.default_root_dir) if disabled else Path(logger.experiment.dir)
        if logger is not None and getattr(logger, "log_dir", None):
            return Path(logger.log_dir)
        return Path(trainer.default_root_dir)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        run_dir = self.run_dir(trainer)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / self.config_filename
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=False)
        rank_zero_info(f"config saved to {path}")
        config = json.loads(self.parser.dump(self.config, skip_none=False, format="json"))
        for logger in trainer.loggers:  # top level (trainer, model, data): the module's own hparams hold a "config"
            logger.log_hyperparams(config)


class Trainer(L.Trainer):
    """Lightning's Trainer, with five differences.

    - ``precision`` also takes ``auto``: the fastest precision this hardware has (see lit_lm.precision).
    - ``bf16-mixed`` and ``16-mixed`` run through lit_lm.precision.MixedPrecision, which clips gradients beside the
      fused AdamW; ``16-mixed`` runs as fp16 with loss scaling on a CPU too, instead of turning into bf16.
    - ``fit(ckpt_path="last")`` resumes the newest ``last*.ckpt`` under the run folder (each run logs and
      checkpoints into its own version folder), after checking that it was trained with this model and data; a
      wandb logger then continues the checkpoint's wandb run.
    - loggers without a folder of their own write into ``default_root_dir`` (lit_lm.loggers.place_in_run_folder).
    - fit starts by saying where the run's files and dashboard are (lit_lm.loggers.RunDashboard).
    """

    def __init__(self, *args, precision: Optional[Union[_PRECISION_INPUT, Literal["auto"]]] = None,
                 plugins: Optional[Union[_PLUGIN_INPUT, list[_PLUGIN_INPUT]]] = None, **kwargs) -> None:
        accelerator = kwargs.get("accelerator", "auto")
        if precision == AUTO:  # the CLI resolves it before building the Trainer; this covers use from Python
            precision = resolve_auto_precision(accelerator)
        plugin = precision_plugin(precision, accelerator, kwargs.get("strategy", "auto"), plugins)
        if plugin is not None:
            plugins = [*(plugins if isinstance(plugins, list) else [plugins] if plugins is not None else []), plugin]
            precision = None
        super().__init__(*args, precision=precision, plugins=plugins, **kwargs)
        place_in_run_folder(self.loggers, self.default_root_dir)
        self.callbacks.insert(0, RunDashboard())  # first, so that its lines come before the other callbacks' own

    def run_folders(self) -> list[Path]:
        """Where this trainer's runs write: its loggers' folders and any fixed checkpoint folder."""
        folders = [Path(logger.save_dir) for logger in self.loggers if getattr(logger, "save_dir", None)]
        folders += [Path(cb.dirpath) for cb in self.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        return folders or [Path(self.default_root_dir) / "lightning_logs"]

    def last_checkpoint(self) -> Path:
        """The newest ``last*.ckpt`` of this trainer's run folders; a ResumeError when there is none."""
        found = find_last_checkpoint(self.run_folders())
        if found is None:
            folders = ", ".join(str(folder) for folder in self.run_folders())
            raise ResumeError(f"ckpt_path last: no last*.ckpt under {folders}, so there is no run to resume. "
                              "Drop --ckpt_path to start a new run, or give a checkpoint file.")
        return found

    def fit(self, model: L.LightningModule, train_dataloaders=None, val_dataloaders=None,
            datamodule: Optional[L.LightningDataModule] = None, ckpt_path: Optional[str] = None,
            weights_only: Optional[bool] = None) -> None:
        if ckpt_path == "last":
            ckpt_path = str(self.last_checkpoint())
            rank_zero_info(f"resuming from {ckpt_path}")
        resume_id = None
        if ckpt_path not in (None, "best", "hpc") and "://" not in str(ckpt_path):  # missing or damaged: one line
            check_resume(ckpt_path, model, datamodule)
            resume_id = stored_wandb_run_id(read_checkpoint(ckpt_path))
        before_wandb_starts(self, resume_id)
        return super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)

    def save_checkpoint(self, filepath, weights_only: bool = False, storage_options: Optional[object] = None) -> None:
        """Lightning's, with a full disk as one DiskFullError: the file is written whole or not at all (Lightning
        writes a temporary file and moves it into place), so the previous checkpoint stays loadable."""
        with disk_space_for(f"the checkpoint {Path(filepath).name}", Path(filepath).parent,
                            "trainer.default_root_dir (the run folder)"):
            super().save_checkpoint(filepath, weights_only, storage_options)

    def prepare(self, model: L.LightningModule, datamodule: L.LightningDataModule) -> dict:
        """Build (or reuse) the data's cached store and print its data card as one JSON line, the last printed.

        Nothing is trained and the model is left untouched: no run folder, log or checkpoint is written, only the
        data's cache. ``python train.py prepare --config <recipe>`` parses exactly as ``fit`` does.
        """
        datamodule.prepare_data()
        card = getattr(datamodule, "card", {})
        print(json.dumps(card), flush=True)
        return card


def resolve_auto_precision(accelerator: object, matmul: tuple[int, int, int] = (1024, 256, 1024)) -> str:
    precision, reason = auto_precision(accelerator, matmul)
    rank_zero_info(f"precision: auto -> {precision} ({reason})")
    return precision


def probe_shape(config) -> tuple[int, int, int]:
    """The feed-forward matmul of the configured model, (rows, hidden, inner), for the ``auto`` precision probe;
    at most 1024 rows, so the probe stays well under a second."""
    try:
        model = config.model.init_args.config
        rows = config.data.init_args.batch_size * config.data.init_args.seq_length
        return min(int(rows), 1024), int(model.hidden_size), int(model.intermediate_size)
    except (AttributeError, TypeError):
        return 1024, 256, 1024


def check_max_time(value: object) -> None:
    """Refuse a ``trainer.max_time`` Lightning's Timer cannot read, saying how to write one."""
    if value is None or isinstance(value, timedelta):
        return
    if isinstance(value, str) and re.fullmatch(r"\d+:\d+:\d+:\d+", value.strip()):
        return
    if isinstance(value, dict):
        try:
            timedelta(**value)
            return
        except TypeError:
            pass
    raise SettingError(f"trainer.max_time: {value!r} is not a duration; write DD:HH:MM:SS (00:04:30:00 is four and a "
                       "half hours) or {hours: 4, minutes: 30}, or null for no time limit.")


class Parser(RecipeParser):
    """The recipe parser, with a value of the wrong type said in one line instead of after the whole usage."""

    def error(self, message: str, ex: Optional[Exception] = None):
        from jsonargparse._common import debug_mode_active

        if not self.exit_on_error or debug_mode_active():
            return super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {condensed(message)}\ntip: `{prog} --help` lists every setting and what it takes.\n")
        sys.exit(2)


def condensed(message: str) -> str:
    """jsonargparse's message for a bad value without its bookkeeping of union types, as ``key.path: what is wrong``
    (``model.config.hidden_size: Expected a <class 'int'>. Got value: big``); other messages as they are."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    noise = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
             "Expected a <class 'NoneType'>", "Problem with given class_path", "Parser key")
    lines = [line.strip(" -") for line in message.splitlines() if line.strip() and not any(n in line for n in noise)]
    return f"{'.'.join(keys)}: {lines[0]}" if keys and len(lines) == 1 else message


class LitLMCLI(LightningCLI):
    """``train.py fit|validate|test --config recipe.yaml``: a LightningCLI that links data settings into the model."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("auto_configure_optimizers", False)  # the module builds AdamW with its decay groups
        kwargs.setdefault("trainer_class", Trainer)
        super().__init__(L.LightningModule, L.LightningDataModule, *args, **kwargs)

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={L.__version__}"])
        parser = Parser(**kwargs)
        parser.add_argument("-c", "--config", action=ActionConfigFile, help=CONFIG_HELP)
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in DATA_TO_MODEL_LINKS.items():
            parser.link_arguments(source, target, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        check_max_time(config.trainer.get("max_time"))
        if "deepspeed" in setting_name(config.trainer.strategy) and importlib.util.find_spec("deepspeed") is None:
            raise RecipeError("trainer.strategy is DeepSpeed, an optional dependency that is not installed: "
                              "pip install deepspeed (it builds against CUDA), or use configs/trainer/ddp.yaml or "
                              "configs/trainer/fsdp.yaml.")
        if config.trainer.precision == AUTO:  # resolved here, so the saved config records what actually ran
            config.trainer.precision = resolve_auto_precision(config.trainer.accelerator, probe_shape(config))
        loggers = config.trainer.logger
        uses_wandb = any(is_wandb(logger) for logger in (loggers if isinstance(loggers, list) else [loggers]))
        if uses_wandb and "WANDB_MODE" not in os.environ and not _wandb_has_credentials():
            os.environ["WANDB_MODE"] = "offline"
            rank_zero_info("wandb: no API key found (`wandb login` or WANDB_API_KEY logs online); logging offline")

    def _parse_ckpt_path(self) -> None:
        """Check a ``--ckpt_path`` file before anything is built: a missing or damaged file is one ResumeError, not a
        traceback from torch.load. Lightning's own version also overwrote the recipe's model settings with the
        checkpoint's hyperparameters (failing on lit-lm's linked ones); here the recipe stays what runs, and
        Trainer.fit names every setting in which it differs from the checkpoint (lit_lm.runs.check_resume), the same
        for a file as for ``last``."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and "://" not in str(ckpt_path):
            read_checkpoint(ckpt_path)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands, plus ``prepare``: build the data's store (Trainer.prepare) with fit's parser."""
        return {**LightningCLI.subcommands(), "prepare": {"model", "datamodule"}}


# Errors a user causes with a setting or a file: one message, no traceback (main() still raises, for tests).
USER_ERRORS = (CorpusError, TokenizerError, ResumeError, NonFiniteLossError, RecipeError, CheckpointError,
               PretrainedSourceError, SettingError, DiskFullError, MisconfigurationException)


def main(args: list[str] | None = None) -> LitLMCLI:
    """One run of ``train.py``; its wandb run, if any, ends with it (failed when the run raised)."""
    try:
        cli = LitLMCLI(args=args)
    except BaseException as error:
        finish_wandb_run(error.code if isinstance(error, SystemExit) and isinstance(error.code, int) else 1)
        raise
    finish_wandb_run(0)
    return cli


def resolved_config(recipe: Union[str, Path], *overrides: str) -> dict:
    """The whole config that ``train.py fit --config recipe [overrides]`` runs, bases merged in: what
    ``--print_config`` prints, as a dict. For code that reads a recipe's settings (benchmarks, tests)."""
    printed = io.StringIO()
    with mock.patch.object(sys, "argv", sys.argv[:1]), contextlib.redirect_stdout(printed):
        try:
            main(["fit", "--config", str(recipe), *overrides, "--print_config"])
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise
    return yaml.safe_load(printed.getvalue())


def run(args: list[str] | None = None) -> None:
    """``python train.py``: ``main`` with a user's mistakes printed as one clear line and exit status 2."""
    exit_on_user_error(main, args)


def exit_on_user_error(command: Callable, *args) -> None:
    """``command(*args)``; a user's mistake (``user_error``) becomes one ``error:`` line and exit status 2, anything
    else stays a traceback."""
    try:
        command(*args)
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)


def user_error(error: BaseException) -> BaseException | None:
    """``error`` or the error behind it that a user caused: one of ``USER_ERRORS``; a ValueError that lit-lm's own
    code raised to refuse a setting while jsonargparse built the classes (it wraps it in a ValueError of its own);
    or a write that found the disk full."""
    seen, parsing = 0, False
    while error is not None and seen < 10:
        if isinstance(error, USER_ERRORS) or (parsing and isinstance(error, ValueError) and _raised_by_lit_lm(error)):
            return error
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            where = f" writing {error.filename}" if error.filename else ""
            return DiskFullError(f"the disk is full ({error.strerror}){where}. Free space, or point "
                                 "trainer.default_root_dir (run folders, checkpoints) and data.cache_dir (data "
                                 "stores) at a disk with room.")
        parsing = parsing or any("jsonargparse" in Path(frame.f_code.co_filename).parts for frame in _frames(error))
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def _frames(error: BaseException) -> list:
    frames, tb = [], error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def _raised_by_lit_lm(error: BaseException) -> bool:
    """Whether the innermost frame of ``error`` is lit-lm's own code (a ``raise`` of ours, not a library's)."""
    frames = _frames(error)
    return bool(frames) and Path(frames[-1].f_code.co_filename).resolve().is_relative_to(PACKAGE)
