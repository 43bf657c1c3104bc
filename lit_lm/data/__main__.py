"""``python -m lit_lm.data prepare --config <recipe>``: build (or reuse) a recipe's cached store, print its data card.

Only the recipe's ``data:`` section is read; ``--data.*`` overrides work as in ``train.py``, e.g.
``python -m lit_lm.data prepare --config configs/quickstart.yaml --data.paths '[my_corpus/]'``.
The last line printed is the data card as one JSON object.
"""

import json
import sys

import lightning as L
import yaml
from jsonargparse import ArgumentParser, set_parsing_settings

set_parsing_settings(docstring_parse_attribute_docstrings=True)


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m lit_lm.data prepare", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="A recipe YAML (its data: section is used).")
    p.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    return p


def prepare(args: list[str]) -> dict:
    p = parser()
    config_path = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"), None)
    recipe = {}
    if config_path is not None:
        with open(config_path) as f:
            recipe = yaml.safe_load(f) or {}
    if "data" not in recipe:
        p.error(f"{config_path} has no data: section.")
    cfg = p.parse_args(["--data", json.dumps(recipe["data"]), *args])
    datamodule = p.instantiate_classes(cfg).data
    datamodule.prepare_data()
    return datamodule.card


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "prepare":
        sys.exit("usage: python -m lit_lm.data prepare --config <recipe.yaml> [--data.* overrides]")
    card = prepare(argv[1:])
    print(json.dumps(card), flush=True)


if __name__ == "__main__":
    main()
