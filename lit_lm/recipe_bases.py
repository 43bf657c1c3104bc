"""Recipes as base plus delta: a recipe's top-level ``base:`` names the files it builds on, merged before it.

``--config recipe.yaml`` becomes one ``--config`` per base file (bases of bases first, each once), then the recipe:
jsonargparse merges several --config files in order, and a recipe's ``trainer.callbacks+:`` appends to its bases'.
``RecipeParser`` is Lightning's parser with that expansion; ``lit_lm.cli.LitLMCLI`` builds it.
"""

import sys
from pathlib import Path
from typing import Optional

import yaml
from jsonargparse import get_loader, set_loader
from lightning.pytorch.cli import LightningArgumentParser


class RecipeError(ValueError):
    """A recipe names a base file that does not exist, or bases that build on each other in a circle."""


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
        for base in base_files(Path(value)) if value is not None else []:
            if base not in added:
                added.add(base)
                expanded += ["--config", str(base)]
        expanded.append(arg)
    return expanded


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
        return super().parse_args(with_base_configs(list(sys.argv[1:] if args is None else args)), *rest, **kwargs)
