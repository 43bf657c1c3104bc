"""``python -m lit_lm.data prepare --config <recipe>``: build (or reuse) a recipe's cached store, print its data card.

The same command as ``python train.py prepare``, parsed by train.py's own parser: every ``--config`` (several too) and
``--data.*`` override that ``fit`` takes works here, e.g.
``python -m lit_lm.data prepare --config configs/quickstart.yaml --data.paths '[my_corpus/]'``.
The last line printed is the data card as one JSON object. Nothing is trained; no run folder is written.
"""

import sys

from lit_lm.cli import main as cli_main
from lit_lm.cli import run

USAGE = "usage: python -m lit_lm.data prepare --config <recipe.yaml> [--data.* overrides]"


def prepare(args: list[str]) -> dict:
    """Run ``train.py prepare`` with ``args``; return the data card it printed."""
    return cli_main(["prepare", *args]).datamodule.card


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "prepare":
        sys.exit(USAGE)
    run(argv)


if __name__ == "__main__":
    main()
