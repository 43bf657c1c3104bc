"""``python -m lit_lm.data prepare --config <recipe>``: build (or reuse) a recipe's cached store, print its data card.

The same command as ``python train.py prepare``, parsed by train.py's own parser: every ``--config`` (several too) and
``--data.*`` override that ``fit`` takes works here, e.g.
``python -m lit_lm.data prepare --config configs/quickstart.yaml --data.paths '[my_corpus/]'``.
The last line printed is the data card as one JSON object. Nothing is trained; no run folder is written.

``python -m lit_lm.data upload --config <recipe> --to s3://bucket/prefix``: the same, then the store is copied to
that URL (lit_lm.data.remote), its manifest last; every node then trains with ``--data.store s3://bucket/prefix``
(docs/object-storage.md). The last line printed is then a summary of the upload as one JSON object.
"""

import argparse
import json
import sys
from unittest import mock

from lit_lm.cli import main as cli_main
from lit_lm.cli import exit_on_user_error, run
from lit_lm.data.remote import RemoteStoreError, upload_store

USAGE = ("usage: python -m lit_lm.data prepare --config <recipe.yaml> [--data.* overrides]\n"
         "       python -m lit_lm.data upload --config <recipe.yaml> [--data.* overrides] --to <URL>")


def prepare(args: list[str]) -> dict:
    """Run ``train.py prepare`` with ``args``; return the data card it printed."""
    return cli_main(["prepare", *args]).datamodule.card


def upload(args: list[str]) -> dict:
    """Build (or reuse) the store of ``args`` (as ``prepare``), copy it to the URL after ``--to``; print and return
    the upload's summary. ``--data.storage_options`` reaches the URL's filesystem."""
    usage = USAGE.splitlines()[-1].strip()
    if {"-h", "--help"} & set(args):
        print(f"{usage}\n  --to URL  where the store goes: s3://bucket/prefix or any fsspec URL\nThe rest as prepare:")
        cli_main(["prepare", *args])  # train.py's help, which exits
    parser = argparse.ArgumentParser(prog="python -m lit_lm.data upload", usage=usage, add_help=False)
    parser.add_argument("--to", required=True, metavar="URL")
    known, rest = parser.parse_known_args(args)
    if any(arg.split("=")[0] in ("--data.store", "--data.init_args.store") for arg in rest):
        raise RemoteStoreError("upload builds the store from the corpus and sends it to --to; drop --data.store.")
    data = cli_main(["prepare", *rest]).datamodule
    if getattr(data, "store", None) is not None:
        raise RemoteStoreError("upload builds the store from the corpus, but the config sets data.store; "
                               "set it to null for the upload.")
    summary = upload_store(data.store_dir, known.to, data.recipe.identity(), data.storage_options, data.progress)
    print(json.dumps(summary), flush=True)
    return summary


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("prepare", "upload"):
        sys.exit(USAGE)
    if argv[0] == "prepare":
        run(argv)
        return
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the arguments reach train.py's parser as a list
        exit_on_user_error(upload, argv[1:])


if __name__ == "__main__":
    main()
