"""A benchmark run on an earlier commit and on the working tree, alternately, in the same run: before/after side by side.

For a refactor that must not change speed. The earlier commit is exported (``git archive``) into a temporary folder;
then the benchmark script runs as a subprocess in each tree in turn (before, after, before, after, ...), each
importing its own ``lit_lm``, so a busy machine slows both alike. Every row of the script's last JSON line is
matched by its non-numeric fields, and each throughput and speedup figure is printed as the median over the rounds,
before and after, with their ratio. Each run of the script also times its own peer (HuggingFace), so the speedup
columns compare like with like even when the machine's load drifts between rounds.

    python benchmarks/before_after.py --before aed57f3 --rounds 3 -- \\
        benchmarks/encoder_throughput.py --families bert deberta --shapes 256x4 --precisions fp32 --steps 5

The last line is one JSON object: the commit, the script and its arguments, and every row before and after.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("tokens_per_s", "speedup")  # the fields compared: throughputs and ratios to the peer


def export_commit(commit: str, folder: Path) -> Path:
    """The tracked files of ``commit`` in ``folder``."""
    archive = folder / "tree.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), commit], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "tree", filter="data")
    return folder / "tree"


def run_script(tree: Path, script: str, args: list[str]) -> list[dict]:
    """The rows of the script's last JSON line, run with ``tree``'s own lit_lm first on the import path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(tree / script), *args], cwd=tree, env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["rows"]


def row_key(row: dict) -> tuple:
    return tuple((k, v) for k, v in row.items() if isinstance(v, str))


def side_by_side(runs: dict[str, list[list[dict]]]) -> list[dict]:
    """One entry per row: each figure's median over the rounds, before and after, and after / before."""
    table = []
    for index, first in enumerate(runs["before"][0]):
        entry = dict(row_key(first))
        for field, value in first.items():
            if not any(name in field for name in FIGURES) or not isinstance(value, (int, float)):
                continue
            before = statistics.median(run[index][field] for run in runs["before"])
            after = statistics.median(run[index][field] for run in runs["after"])
            entry[field] = {"before": round(before, 3), "after": round(after, 3), "ratio": round(after / before, 3)}
        table.append(entry)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of the script per tree, alternating")
    parser.add_argument("script", help="the benchmark script, relative to the repository root")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments (after --)")
    args = parser.parse_args()
    script_args = [a for a in args.script_args if a != "--"]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before], check=True,
                            capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": export_commit(commit, Path(tmp)), "after": ROOT}
        runs = {"before": [], "after": []}
        for round_ in range(args.rounds):
            for name, tree in trees.items():
                runs[name].append(run_script(tree, args.script, script_args))
                print(f"round {round_ + 1}/{args.rounds}: {name} done", flush=True)
    for before, after in zip(runs["before"][0], runs["after"][0]):
        if row_key(before) != row_key(after):
            sys.exit(f"the two trees' rows differ: {row_key(before)} vs {row_key(after)}")
    table = side_by_side(runs)
    print(f"{args.script} {' '.join(script_args)}: median of {args.rounds} rounds, {commit} (before) vs working tree")
    for entry in table:
        label = " ".join(str(v) for v in entry.values() if not isinstance(v, dict))
        for field, figure in ((k, v) for k, v in entry.items() if isinstance(v, dict)):
            print(f"  {label:28} {field:26} before {figure['before']:>9} after {figure['after']:>9} "
                  f"after/before {figure['ratio']:.3f}")
    print(json.dumps({"benchmark": "before_after", "before": commit, "after": "working tree", "script": args.script,
                      "args": script_args, "rounds": args.rounds, "rows": table}))


if __name__ == "__main__":
    main()
