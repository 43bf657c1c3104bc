"""Recipes as base plus delta: a recipe's top-level ``base:`` names the files it builds on, merged before it.

``--config recipe.yaml`` becomes one ``--config`` per base file (bases of bases first, each once), then the recipe:
jsonargparse merges several --config files in order, and a recipe's ``trainer.callbacks+:`` appends to its bases'.
``RecipeParser`` is Lightning's parser with that expansion; ``lit_lm.cli.LitLMCLI`` builds it.

It also reads one word jsonargparse lacks: a recipe's callback named by its class, so that one command-line word can
change or remove it wherever it sits in the list (jsonargparse's ``--trainer.callbacks.init_args.X`` reaches only the
last callback):

    --trainer.callbacks.BatchSizeRamp.ramp_fraction=0     # sets one init argument of the recipe's BatchSizeRamp
    --trainer.callbacks.BatchSizeRamp=null                # takes it out of the run
"""

import json
import re
import sys
from pathlib import Path
from typing import Optional

import yaml
from jsonargparse import get_loader, set_loader
from lightning.pytorch.cli import LightningArgumentParser


class RecipeError(ValueError):
    """A recipe names a base file that does not exist, or bases that build on each other in a circle; or a word
    names a callback the run does not have."""


BASE_KEY = "base"
CONFIG_HELP = ("A recipe (YAML). Its top-level `base:` names the files (relative to it) it builds on; they are merged "
               "first, then the recipe, whose `trainer.callbacks+:` appends to theirs. --print_config shows the whole "
               "result; the config.yaml a run saves is that whole and reproduces the run alone.")


def base_files(recipe: Path, _building: tuple[Path, ...] = ()) -> list[Path]:
    """The files ``recipe`` builds on, in merge order (each after its own bases, each once); none for a YAML string."""
    try:
        content = yaml.safe_load(recipe.read_text()) if recipe.is_file() else None
    except (OSError, yaml.YAMLError):  # a YAML string given for --config, or a broken file jsonargparse reports
        return []
    declared = content.get(BASE_KEY) if isinstance(content, dict) else None
    names = [declared] if isinstance(declared, str) else declared or []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise RecipeError(f"{recipe}: `base:` takes a file or a list of files, not {declared!r}.")
    files, building = [], (*_building, recipe.resolve())
    for name in names:
        base = (recipe.parent / name).resolve()
        if not base.is_file():
            raise RecipeError(f"{recipe}: base {name} is not a file ({base}). Fix the `base:` line of {recipe}.")
        if base in building:
            raise RecipeError(f"{recipe}: base {name} builds on {recipe} itself. Remove one of the `base:` lines.")
        files += [f for f in [*base_files(base, building), base] if f not in files]
    return files


def with_base_configs(args: list[str]) -> list[str]:
    """``args`` with each ``--config FILE`` preceded by ``--config BASE`` for every base file that FILE builds on."""
    expanded, added = [], set()
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--config=") else (
            args[i + 1] if arg in ("-c", "--config") and i + 1 < len(args) else None)
        bases = base_files(Path(value)) if value is not None else []
        if bases:
            check_logger_delta(Path(value), bases)
        for base in bases:
            if base not in added:
                added.add(base)
                expanded += ["--config", str(base)]
        if value is not None:  # given itself: not again as a later file's base (args already expanded, a 2nd parse)
            added.add(Path(value).resolve())
        expanded.append(arg)
    return expanded


def check_logger_delta(recipe: Path, bases: list[Path]) -> None:
    """A recipe written for a single base logger (``logger: {init_args: ...}``) on bases that log to a list of
    loggers: one clear error instead of jsonargparse's "not a valid subclass of Logger"."""
    logger = (read_yaml(recipe).get("trainer") or {}).get("logger")
    if not isinstance(logger, dict) or "class_path" in logger:
        return
    listed = [b for b in bases if isinstance((read_yaml(b).get("trainer") or {}).get("logger"), list)]
    if listed:
        raise RecipeError(
            f"{recipe}: `trainer.logger` sets {sorted(logger)} without a class_path, but {listed[-1].name} logs to a "
            f"list of loggers (CSV and wandb), which write into trainer.default_root_dir: delete the recipe's "
            f"`logger:` line and set `default_root_dir`, or give a whole logger (class_path and init_args).")


def read_yaml(path: Path) -> dict:
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return content if isinstance(content, dict) else {}


_yaml_loader = get_loader("yaml")


def _load_without_base(content: str, path: Optional[str] = None) -> object:
    """jsonargparse's YAML loader; a config file's ``base:`` key (already expanded into --config files) is dropped."""
    value = _yaml_loader(content)
    if path is not None and isinstance(value, dict):  # jsonargparse passes `path` for config files only
        value.pop(BASE_KEY, None)
    return value


set_loader("recipe", _load_without_base, exceptions=(yaml.YAMLError,))


class RecipeParser(LightningArgumentParser):
    """Lightning's parser, for recipes that build on base files (see ``with_base_configs``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("parser_mode", "recipe")
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Optional[list[str]] = None, *rest, **kwargs):
        args = with_base_configs(list(sys.argv[1:] if args is None else args))
        if any(CALLBACK_WORD.match(arg) for arg in args):
            args = self.with_callbacks_edited(args)
        return super().parse_args(args, *rest, **kwargs)

    def with_callbacks_edited(self, args: list[str]) -> list[str]:
        """``args`` with every ``--trainer.callbacks.<Class>...`` word applied to the callbacks that all the other
        words give, as one ``--trainer.callbacks=[...]`` word after them."""
        words = [CALLBACK_WORD.match(arg) for arg in args]
        others = [arg for arg, word in zip(args, words) if word is None]
        probe = [arg for arg in others if not arg.startswith("--print_config")]
        parsed = super().parse_args(probe)
        subcommand = parsed.get("subcommand")
        callbacks = parsed.get(f"{subcommand}.trainer.callbacks" if subcommand else "trainer.callbacks") or []
        callbacks = [json.loads(json.dumps(c.as_dict() if hasattr(c, "as_dict") else c, default=str))
                     for c in (callbacks if isinstance(callbacks, list) else [callbacks])]
        for word in filter(None, words):
            callbacks = edit_callbacks(callbacks, *word.groups())
        return [*others, f"--trainer.callbacks={json.dumps(callbacks)}"]


CALLBACK_WORD = re.compile(r"^--trainer\.callbacks\.([A-Z]\w*)(?:\.(\w+))?=(.*)$", re.DOTALL)


def edit_callbacks(callbacks: list[dict], name: str, argument: Optional[str], value: str) -> list[dict]:
    """``callbacks`` (class_path/init_args dicts) with those of class ``name`` changed: ``argument`` set to ``value``
    (YAML), or, without an argument and with a value of ``null``, taken out."""
    matches = [c for c in callbacks if c.get("class_path", "").rsplit(".", 1)[-1] == name]
    if not matches:
        present = ", ".join(c.get("class_path", "?").rsplit(".", 1)[-1] for c in callbacks) or "none"
        raise RecipeError(f"--trainer.callbacks.{name}: this run has no {name} callback (its callbacks: {present}).")
    parsed = yaml.safe_load(value)
    if argument is None:
        if parsed is not None:
            raise RecipeError(f"--trainer.callbacks.{name}={value}: give `=null` to take the callback out, or "
                              f"set one of its arguments: --trainer.callbacks.{name}.ARGUMENT=VALUE.")
        return [c for c in callbacks if c not in matches]
    for callback in matches:
        callback.setdefault("init_args", {})[argument] = parsed
    return callbacks
