"""``python -m lit_lm.glue --checkpoint CKPT --tasks sst2,cola,mrpc --out DIR``: the fine-tuning suite.

Fine-tunes each checkpoint on each task with configs/base/finetune.yaml's one protocol and writes DIR/results.md (a
table: one row per task, one column per checkpoint, the average last) and DIR/results.json. Rerunning with the same
DIR skips what is done. Words after ``--`` go to every run, as train.py takes them, e.g.
``-- --trainer.max_epochs 1 --data.init_args.max_train_rows 5000``.
"""

import argparse
import sys

from lit_lm.glue.suite import SuiteError, run_suite


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m lit_lm.glue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, metavar="[NAME=]PATH",
                        help="a lit-lm run folder or .ckpt, a folder exported by lit_lm.hf, or a local "
                             "BERT/RoBERTa/DeBERTa-v2/GPT-2 folder; repeat for one column each")
    parser.add_argument("--tasks", default="sst2,cola,mrpc",
                        help="comma-separated task names (configs/finetune/<name>.yaml) or task recipe files")
    parser.add_argument("--out", required=True, help="folder for results.md, results.json and the runs")
    parser.add_argument("--scratch", action="store_true",
                        help="also fine-tune each checkpoint's architecture from random weights (the baseline)")
    return parser.parse_args(argv), overrides


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    from lit_lm.cli import user_error

    try:
        results = run_suite(args.checkpoint, [t for t in args.tasks.split(",") if t], args.out, overrides,
                            args.scratch)
    except Exception as error:
        cause = error if isinstance(error, SuiteError) else user_error(error)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)
    print(results.markdown(), end="")


if __name__ == "__main__":
    main()
