"""The command line: LightningCLI with lit-lm's argument links, config saving and wandb fallback."""

import os
from pathlib import Path
from typing import Literal, Optional, Union
from urllib.parse import urlparse

import lightning as L
from jsonargparse import set_parsing_settings
from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_lm.callbacks.precision import AUTO, auto_precision

# Field docstrings of the config dataclasses become the --help text.
set_parsing_settings(docstring_parse_attribute_docstrings=True)

# What the tokenizer and the data decide, flowing into the model when both are instantiated.
DATA_TO_MODEL_LINKS = {
    "data.vocab_size": "model.init_args.config.vocab_size",
    "data.pad_token_id": "model.init_args.config.pad_token_id",
    "data.special_token_ids": "model.init_args.special_token_ids",
    "data.mask_token_id": "model.init_args.mask_token_id",
    "data.seq_length": "model.init_args.seq_length",
    "data.eos_token_id": "model.init_args.eos_token_id",
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
    save_dir, so a second run would clash with the first. Here each run writes to its own folder: the wandb run's
    files folder (uploaded with the run) or the CSV/TensorBoard version folder.
    """

    def __init__(self, parser, config, config_filename: str = "config.yaml", **kwargs) -> None:
        kwargs.update(overwrite=True, save_to_log_dir=False)
        super().__init__(parser, config, config_filename, **kwargs)

    def run_dir(self, trainer: L.Trainer) -> Path:
        logger = trainer.logger
        if isinstance(logger, WandbLogger):
            return Path(logger.experiment.dir)
        if logger is not None and getattr(logger, "log_dir", None):
            return Path(logger.log_dir)
        return Path(trainer.default_root_dir)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        run_dir = self.run_dir(trainer)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / self.config_filename
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=False)
        rank_zero_info(f"config saved to {path}")
        if trainer.logger is not None:
            trainer.logger.log_hyperparams({"config": self.parser.dump(self.config, skip_none=False, format="json")})


class Trainer(L.Trainer):
    """Lightning's Trainer, whose ``precision`` also takes ``auto``: the fastest mixed precision this hardware has
    (bf16-mixed on Ampere+ GPUs and AVX512-BF16/AMX CPUs, 16-mixed on older GPUs, 32-true otherwise)."""

    def __init__(self, *args, precision: Optional[Union[_PRECISION_INPUT, Literal["auto"]]] = None, **kwargs) -> None:
        if precision == AUTO:  # the CLI resolves it before building the Trainer; this covers use from Python
            precision = resolve_auto_precision(kwargs.get("accelerator", "auto"))
        super().__init__(*args, precision=precision, **kwargs)


def resolve_auto_precision(accelerator: object) -> str:
    precision, reason = auto_precision(accelerator)
    rank_zero_info(f"precision: auto -> {precision} ({reason})")
    return precision


class LitLMCLI(LightningCLI):
    """``train.py fit|validate|test --config recipe.yaml``: a LightningCLI that links data settings into the model."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("auto_configure_optimizers", False)  # the module builds AdamW with its decay groups
        kwargs.setdefault("trainer_class", Trainer)
        super().__init__(L.LightningModule, L.LightningDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in DATA_TO_MODEL_LINKS.items():
            parser.link_arguments(source, target, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if config.trainer.precision == AUTO:  # resolved here, so the saved config records what actually ran
            config.trainer.precision = resolve_auto_precision(config.trainer.accelerator)
        loggers = config.trainer.logger
        loggers = loggers if isinstance(loggers, list) else [loggers]
        uses_wandb = any("WandbLogger" in str(getattr(lg, "class_path", "")) for lg in loggers)
        if uses_wandb and "WANDB_MODE" not in os.environ and not _wandb_has_credentials():
            os.environ["WANDB_MODE"] = "offline"
            rank_zero_warn(
                "wandb: no API key found (run `wandb login` or set WANDB_API_KEY); logging offline to ./wandb. "
                "Upload later with `wandb sync wandb/offline-run-*`."
            )


def main(args: list[str] | None = None) -> LitLMCLI:
    return LitLMCLI(args=args)
