"""Crammed BERT against the 2018 BERT recipe and transformers' default Trainer under the same wall-clock budget, and
what each of cramming's tricks is worth: configs/ablations/cramming.yaml run by the ablation runner on the Gutenberg
books of ../shared/data (python -m lit_lm.ablate does the work; this only picks the file, the corpus and the folder).

    python benchmarks/budget_comparison.py --minutes 10                               # every variant: 15 runs
    python benchmarks/budget_comparison.py --minutes 3 --runs crammed,original,hf-trainer   # the README's table

Without ../shared/data/gutenberg (or --data) it says so and exits. Output: runs/budget_comparison/results.md (the
table), results.json, loss_vs_time.png and loss_vs_tokens.png.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's lit_lm, even where another one is installed

from lit_lm.ablate.__main__ import main as ablate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget of every run")
    parser.add_argument("--runs", default="", help="comma-separated variants of cramming.yaml (default: all)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "gutenberg")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "budget_comparison")
    args = parser.parse_args()
    if not args.data.exists():
        reason = f"{args.data} is absent (../shared/data is only beside the project on developer machines)"
        print(f"skipped: {reason}")
        print(json.dumps({"benchmark": "budget_comparison", "skipped": reason}))
        return 0
    return ablate([str(ROOT / "configs" / "ablations" / "cramming.yaml"), "--minutes", f"{args.minutes:g}",
                   "--out", str(args.out), *(["--only", args.runs] if args.runs else []),
                   "--", f"--data.init_args.paths=[{args.data}]"])


if __name__ == "__main__":
    sys.exit(main())
