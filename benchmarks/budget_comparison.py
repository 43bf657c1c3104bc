"""Crammed BERT against the original 2018 BERT recipe under the same wall-clock budget, and what each trick is worth.

Every run trains from scratch through ``train.py`` (one process each, one after the other) with the same
``trainer.max_time``, on the same corpus, tokenizer and data order, and is then scored on the SAME held-out
sequences with the SAME masks (15% of the tokens, BERT's 80/10/10), whatever masking rate it trained with, so the
held-out MLM losses are directly comparable. Runs:

- ``crammed``: configs/recipes/crammed-bert.yaml (ours);
- ``original``: configs/recipes/original-bert.yaml (the peer: the 2018 recipe at the same model size);
- one ablation per trick: the crammed recipe with exactly that trick removed (``--runs`` lists their names).

Data preparation (tokenizer training, packing) happens once, before the first run, outside every budget; the
budget counts training time only, as Lightning's ``Timer`` does. Validation during training is off, so every run
spends its whole budget training.

    python benchmarks/budget_comparison.py --minutes 10                   # everything: 12 runs, about 2.5 hours
    python benchmarks/budget_comparison.py --minutes 1 --runs crammed,original,-sparse-prediction

It needs ../shared/data/gutenberg (or --data); without it, it says so and exits. The last line is one JSON object.
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's lit_lm, even where another one is installed

import lightning as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from jsonargparse import ArgumentParser  # noqa: E402

from lit_lm.cli import resolved_config  # noqa: E402
from lit_lm.precision import auto_precision  # noqa: E402
from lit_lm.modules import MaskedLMModule  # noqa: E402
from lit_lm.modules.masking import IGNORE_INDEX, mask_tokens  # noqa: E402

RECIPES = {"crammed": ROOT / "configs/recipes/crammed-bert.yaml", "original": ROOT / "configs/recipes/original-bert.yaml"}
EVAL_MASK_RATE, EVAL_SEED = 0.15, 20221228


def _model(cfg: dict) -> dict:
    return cfg["model"]["init_args"]["config"]


def _callback(cfg: dict, name: str) -> dict | None:
    return next((c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith(name)), None)


def _remove_ramp(cfg: dict) -> None:
    ramp = _callback(cfg, "BatchSizeRamp")
    cfg["trainer"]["callbacks"].remove(ramp)
    micro = cfg["data"]["init_args"]["batch_size"]
    cfg["trainer"]["accumulate_grad_batches"] = ramp["init_args"]["target_batch_size"] // micro


def _bert_schedule(cfg: dict) -> None:
    _callback(cfg, "OneCycleLR")["init_args"].update(warmup_fraction=0.01, initial_lr_ratio=0.0, final_lr_ratio=0.0)


# name -> (what the crammed recipe gets instead, how); each removes exactly one trick
ABLATIONS = {
    "-pre-LN": ("post-LN, no final norm", lambda c: _model(c).update(norm_placement="post", final_norm=False)),
    "-no-qkv-bias": ("Q/K/V biases", lambda c: _model(c).update(qkv_bias=True)),
    "-tied-embeddings": ("untied output matrix", lambda c: _model(c).update(tie_embeddings=False)),
    "-sparse-prediction": ("MLM head on every position", lambda c: _model(c).update(sparse_prediction=False)),
    "-no-dropout": ("dropout 0.1", lambda c: _model(c).update(dropout=0.1, attention_dropout=0.1)),
    "-25%-masking": ("15% masking", lambda c: c["model"]["init_args"].update(mask_rate=0.15)),
    "-batch-ramp": ("fixed batch at the target", _remove_ramp),
    "-one-cycle": ("BERT's 1% warmup, linear decay", _bert_schedule),
    "-clipping": ("no gradient clipping", lambda c: c["trainer"].update(gradient_clip_val=None)),
    "-fused-adamw": ("unfused AdamW", lambda c: c["model"]["init_args"]["optimizer"].update(fused=False)),
    "-mixed-precision": ("32-true", lambda c: c["trainer"].update(precision="32-true")),
}


def run_config(name: str, minutes: float, data: Path, run_dir: Path) -> dict:
    base = "original" if name == "original" else "crammed"
    cfg = resolved_config(RECIPES[base])  # the whole config, the recipe's base merged in
    if name in ABLATIONS:
        ABLATIONS[name][1](cfg)
    seconds = round(minutes * 60)
    trainer = cfg["trainer"]
    trainer.update(max_time=f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}",
                   default_root_dir=str(run_dir), limit_val_batches=0, num_sanity_val_steps=0,
                   enable_progress_bar=False, enable_model_summary=False)
    trainer["logger"]["init_args"]["save_dir"] = str(run_dir)
    for callback in trainer["callbacks"]:
        if "Checkpoint" in callback["class_path"]:
            callback["init_args"]["dirpath"] = str(run_dir / "checkpoints")
    cfg["data"]["init_args"]["paths"] = [str(data)]
    return cfg


def prepare_eval_set(cfg: dict, n_sequences: int) -> dict:
    """Builds (or reuses) the cached data store, then fixes the held-out sequences and their masks for every run."""
    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    datamodule = parser.instantiate_classes(parser.parse_object({"data": cfg["data"]})).data
    datamodule.prepare_data()
    datamodule.setup("fit")
    rows = torch.cat([batch["input_ids"] for batch in datamodule.val_dataloader()])
    pick = torch.linspace(0, len(rows) - 1, min(n_sequences, len(rows))).long()  # spread over every held-out book
    input_ids = rows[pick]
    special = torch.tensor(datamodule.special_token_ids)
    allowed = torch.ones(datamodule.vocab_size, dtype=torch.bool)
    allowed[special] = False
    inputs, labels = mask_tokens(
        input_ids, mask_rate=EVAL_MASK_RATE, mask_token_id=datamodule.mask_token_id, special_token_ids=special,
        replacement_ids=allowed.nonzero().squeeze(1), generator=torch.Generator().manual_seed(EVAL_SEED))
    return {"inputs": inputs, "labels": labels, "attention_mask": (input_ids != datamodule.pad_token_id).long(),
            "card": datamodule.card}


@torch.no_grad()
def held_out_loss(checkpoint: Path, eval_set: dict, batch_size: int = 64) -> float:
    """Mean cross-entropy over every masked held-out token (the same tokens and masks for every run)."""
    module = MaskedLMModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    total, count = 0.0, 0
    for start in range(0, len(eval_set["inputs"]), batch_size):
        part = slice(start, start + batch_size)
        out = module(eval_set["inputs"][part], eval_set["attention_mask"][part], eval_set["labels"][part])
        n = int((out.labels != IGNORE_INDEX).sum())
        total, count = total + out.loss.item() * n, count + n
    return total / count


def read_run(run_dir: Path, checkpoint_path: Path) -> dict:
    """What a finished run did, from its final checkpoint (steps, tokens, training seconds) and its logged metrics."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    callbacks = checkpoint["callbacks"]
    tokens = next((state["tokens_seen"] for key, state in callbacks.items() if key.startswith("ThroughputMFU")), None)
    seconds = next(state["time_elapsed"]["train"] for key, state in callbacks.items() if key.startswith("Timer"))
    rows = []
    for file in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        with open(file) as f:
            rows += list(csv.DictReader(f))
    mfus = [float(r["perf/mfu"]) for r in rows if r.get("perf/mfu")]
    batch_sizes = [float(r["train/batch_size"]) for r in rows if r.get("train/batch_size")]
    return {"steps": checkpoint["global_step"], "train_seconds": round(seconds, 1), "tokens_seen": tokens,
            "tokens_per_sec": round(tokens / seconds) if tokens and seconds else None,
            "mfu": round(sum(mfus) / len(mfus), 4) if mfus else None,
            "final_batch_size": batch_sizes[-1] if batch_sizes else None}


def train(name: str, cfg: dict, run_dir: Path) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: no old checkpoint or log may mix in
    run_dir.mkdir(parents=True)
    config_path = run_dir / "run.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(run_dir / "train.log", "w") as log:
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config_path)],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    checkpoint, diverged = run_dir / "checkpoints" / "last.ckpt", None
    if proc.returncode != 0:
        tail = (run_dir / "train.log").read_text()[-2000:]
        stopped = sorted((run_dir / "checkpoints").glob("nonfinite-step*.ckpt"))
        if not stopped:
            raise RuntimeError(f"run {name} failed (exit {proc.returncode}); the end of {run_dir / 'train.log'}:\n{tail}")
        # StopOnNonFiniteLoss ended it: score the last good weights, and say so in the table
        checkpoint, diverged = stopped[-1], int(stopped[-1].stem.removeprefix("nonfinite-step"))
    return {"process_seconds": round(seconds, 1), "load_average_at_start": round(load, 2),
            "diverged_at_step": diverged, "checkpoint": str(checkpoint), **read_run(run_dir, checkpoint)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget of every run")
    parser.add_argument("--runs", default="all",
                        help=f"comma-separated: crammed, original and any of {', '.join(ABLATIONS)}; or 'all'")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "gutenberg")
    parser.add_argument("--eval-sequences", type=int, default=512, help="held-out sequences scored for every run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "budget_comparison")
    args = parser.parse_args()

    names = ["crammed", "original", *ABLATIONS] if args.runs == "all" else [r.strip() for r in args.runs.split(",")]
    unknown = [n for n in names if n not in ("crammed", "original", *ABLATIONS)]
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from crammed, original, {', '.join(ABLATIONS)}")
    if not args.data.exists():
        reason = f"{args.data} is absent (../shared/data is only beside the project on developer machines)"
        print(f"skipped: {reason}")
        print(json.dumps({"benchmark": "budget_comparison", "skipped": reason}))
        return
    precision, why = auto_precision("auto")
    if "-mixed-precision" in names and precision == "32-true":
        print(f"skipping -mixed-precision: precision auto is already 32-true here ({why})")
        names.remove("-mixed-precision")

    crammed, original = (run_config(n, args.minutes, args.data, args.out / n) for n in ("crammed", "original"))
    if crammed["data"] != original["data"]:
        raise SystemExit("the two recipes must share their data settings, or their held-out losses do not compare")
    print(f"preparing {args.data} and the held-out set (outside every budget) ...", flush=True)
    eval_set = prepare_eval_set(crammed, args.eval_sequences)
    n_masked = int((eval_set["labels"] != IGNORE_INDEX).sum())
    print(f"held-out: {len(eval_set['inputs'])} sequences, {n_masked} masked tokens; data card {json.dumps(eval_set['card'])}")

    results = []
    for name in names:
        cfg = run_config(name, args.minutes, args.data, args.out / name)
        print(f"[{name}] training for {args.minutes:g} min ...", flush=True)
        result = {"run": name, "recipe": "original-bert" if name == "original" else "crammed-bert",
                  "change": ABLATIONS[name][0] if name in ABLATIONS else "",
                  **train(name, cfg, args.out / name)}
        result["held_out_mlm_loss"] = round(held_out_loss(Path(result["checkpoint"]), eval_set), 4)
        results.append(result)
        print(f"[{name}] held-out MLM loss {result['held_out_mlm_loss']:.4f} after {result['steps']} steps, "
              f"{result['tokens_seen'] or 0:.0f} tokens ({result['tokens_per_sec'] or 0:.0f} tokens/s)", flush=True)

    reference = next((r["held_out_mlm_loss"] for r in results if r["run"] == "crammed"), None)
    print("\n| run | change from crammed | steps | tokens seen | tokens/s | held-out MLM loss | vs crammed |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        delta = "" if reference is None else f"{r['held_out_mlm_loss'] - reference:+.3f}"
        change = "the 2018 recipe" if r["run"] == "original" else r["change"]
        if r["diverged_at_step"] is not None:
            change += f" (loss non-finite at step {r['diverged_at_step']}: scored the last good weights)"
        print(f"| {r['run']} | {change} | {r['steps']} | {r['tokens_seen'] or 0:.0f} | {r['tokens_per_sec'] or 0:.0f} | "
              f"{r['held_out_mlm_loss']:.3f} | {delta} |")
    print(json.dumps({
        "benchmark": "budget_comparison", "minutes_per_run": args.minutes, "data": str(args.data),
        "eval": {"sequences": len(eval_set["inputs"]), "masked_tokens": n_masked, "mask_rate": EVAL_MASK_RATE},
        "machine": f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} CPU cores, torch {torch.__version__}", "precision_auto": precision,
        "runs": results,
    }))


if __name__ == "__main__":
    main()
