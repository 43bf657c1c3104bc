"""``python -m lit_lm.ablate FILE.yaml (--minutes M | --steps N) --out DIR [-- train.py words for every run]``

Trains every variant of an ablation file (configs/ablations/*.yaml: a base recipe, its variants as lists of train.py
words, optional seeds) from scratch under the same budget, M minutes of training time or N optimizer steps (the same
work whatever the machine's speed), on the same rows, tokenizer and held-out set, and writes DIR/results.md (the
table), DIR/results.json, DIR/loss_vs_time.png and DIR/loss_vs_tokens.png. Run the same command again after an
interruption: finished runs are kept, an interrupted one resumes from its checkpoint (to the same step count).

    python -m lit_lm.ablate configs/ablations/cramming.yaml --minutes 10 --out runs/ablations/cramming
    python -m lit_lm.ablate configs/ablations/cramming.yaml --steps 500 --out runs/ablations/cramming-500
    python -m lit_lm.ablate configs/ablations/positions.yaml --minutes 1 --out runs/pos -- \\
        --data.init_args.paths=[../shared/data/gutenberg]
"""

import argparse
import sys
from pathlib import Path

from lit_lm.ablate.budget import Budget
from lit_lm.ablate.runner import Runner, Settings
from lit_lm.ablate.spec import AblationFileError, read_ablation


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    words = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m lit_lm.ablate", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="the ablation file (configs/ablations/*.yaml)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="the budget of every run: minutes of training time")
    budget.add_argument("--steps", type=int, help="the budget of every run: optimizer steps (the recipe's max_time "
                                                  "is lifted; the schedules follow the steps)")
    parser.add_argument("--out", type=Path, required=True, help="the folder of the runs, table, JSON and plots")
    parser.add_argument("--seeds", type=int, default=None, help="runs per variant (default: the file's `seeds:`)")
    parser.add_argument("--only", default=None, help="comma-separated variants to run (default: all)")
    parser.add_argument("--eval-sequences", type=int, default=512, help="held-out sequences scored for every run")
    parser.add_argument("--points", type=int, default=10, help="held-out scores along each run (the plots)")
    parser.add_argument("--downstream", default="", help="comma-separated fine-tuning tasks (lit_lm.glue), e.g. sst2")
    args = parser.parse_args(argv)
    if (args.minutes is not None and not args.minutes > 0) or (args.steps is not None and args.steps < 1) or \
            (args.seeds is not None and args.seeds < 1) or args.eval_sequences < 1 or args.points < 1:
        parser.error("--minutes must be > 0; --steps, --seeds, --eval-sequences and --points >= 1")
    args.budget = Budget("minutes", args.minutes) if args.minutes is not None else Budget("steps", args.steps)
    return args, words


def main(argv: list[str] | None = None) -> int:
    args, words = parse(list(sys.argv[1:] if argv is None else argv))
    try:
        ablation = read_ablation(args.file)
        if args.seeds is not None:
            ablation = type(ablation)(ablation.path, ablation.base, ablation.variants, args.seeds, ablation.text)
        if args.only:
            names = [n.strip() for n in args.only.split(",") if n.strip()]
            unknown = sorted(set(names) - {v.name for v in ablation.variants})
            if unknown:
                raise AblationFileError(f"--only: no variant {', '.join(unknown)} in {args.file} (its variants: "
                                        f"{', '.join(v.name for v in ablation.variants)}).")
            ablation = type(ablation)(ablation.path, ablation.base, tuple(v for v in ablation.variants
                                      if v.name in names or v == ablation.reference), ablation.seeds, ablation.text,
                                      only=True)
        settings = Settings(args.budget, args.out, words, args.eval_sequences, args.points,
                            [t.strip() for t in args.downstream.split(",") if t.strip()])
        Runner(ablation, settings).run()
    except Exception as error:  # a user's mistake (a bad file, corpus or word) is one line; anything else a traceback
        from lit_lm.cli import user_error

        cause = error if isinstance(error, AblationFileError) else user_error(error)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nablate: interrupted; run the same command again to resume (finished runs are kept in {args.out}).",
              file=sys.stderr)
        return 130
    print(f"ablate: {args.out / 'results.md'}, results.json, loss_vs_time.png, loss_vs_tokens.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
