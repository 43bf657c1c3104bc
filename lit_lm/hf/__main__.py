"""``python -m lit_lm.hf export CHECKPOINT FOLDER [--tokenizer PATH]``: a trained run -> a HuggingFace model folder."""

import argparse
import sys

from lit_lm.checkpoint import errors_for_humans
from lit_lm.hf import ARCHITECTURES, UnsupportedConfig, export_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_lm.hf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "export", help="write a lit-lm checkpoint as a folder AutoModelForMaskedLM (encoders) or AutoModelForCausalLM "
                       "(decoders) and AutoTokenizer load")
    export.add_argument("checkpoint", help="a Lightning checkpoint of a lit-lm run, e.g. "
                                           "runs/x/logs/version_0/checkpoints/last.ckpt, or a run folder (its newest "
                                           "last*.ckpt)")
    export.add_argument("folder", help="the folder to write")
    export.add_argument("--tokenizer", default=None,
                        help="the tokenizer the run used: its data store folder (printed as 'data: built/reusing "
                             "<folder>' when training starts), a tokenizer.json, or the data.tokenizer.path it was "
                             "given; optional for causal-LM checkpoints, which hold theirs")
    export.add_argument("--architecture", default="auto", choices=ARCHITECTURES,
                        help="'auto': the built-in transformers class when one represents the model exactly, "
                             "otherwise self-contained custom code (load with trust_remote_code=True)")
    export.add_argument("--overwrite", action="store_true", help="replace the folder if it exists")
    args = parser.parse_args(argv)
    folder = export_checkpoint(args.checkpoint, args.folder, args.tokenizer, args.architecture, args.overwrite)
    print(f"exported to {folder}")


if __name__ == "__main__":
    with errors_for_humans(UnsupportedConfig, FileExistsError, FileNotFoundError):
        main(sys.argv[1:])
