"""Loader throughput against the training step's consumption, for the quickstart recipe as shipped.

Builds (or reuses) the quickstart store on the embedded default corpus, then in one run measures
  loader  batches/s of the training DataLoader (shuffled exactly-once reads from the shards), 0 and 2 workers;
  step    batches/s of the quickstart model's training step (masking, forward, backward, AdamW step), fp32 CPU.
The loader must outpace the step by far (target: 20x), so training never waits for data.

    python benchmarks/data_loader.py [--steps 20] [--batches 2000]

Last line: one JSON object.
"""

import argparse
import json
import sys
import time
from itertools import islice
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's lit_lm, even where another one is installed

from lit_lm.cli import LitLMCLI  # noqa: E402


def loader_rate(datamodule, workers: int, batches: int) -> float:
    datamodule.num_workers = workers
    loader = datamodule.train_dataloader()
    iterator = iter(loader)
    next(iterator)  # worker start-up is paid once per run, not per batch
    start = time.perf_counter()
    n = sum(1 for _ in islice(iterator, batches))
    return n / (time.perf_counter() - start)


def step_rate(model, datamodule, steps: int) -> float:
    model.train()
    optimizer = model.configure_optimizers()
    batches = list(islice(iter(datamodule.train_dataloader()), steps + 2))

    def step(batch):
        inputs, labels = model._mask(batch["input_ids"])
        loss = model(inputs, batch["attention_mask"], labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for batch in batches[:2]:  # warm-up
        step(batch)
    start = time.perf_counter()
    for batch in batches[2:]:
        step(batch)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", type=int, default=2000)
    args = parser.parse_args()
    sys.argv = ["train.py"]
    cli = LitLMCLI(args=["--config", str(ROOT / "configs" / "quickstart.yaml"), "--trainer.logger", "false",
                         "--data.init_args.progress", "false"], run=False)
    datamodule, model = cli.datamodule, cli.model
    datamodule.prepare_data()
    datamodule.setup("fit")
    torch.set_num_threads(2)
    steps = step_rate(model, datamodule, args.steps)
    print(f"training step: {steps:.2f} batches/s (batch {datamodule.batch_size} x {datamodule.seq_length})", flush=True)
    rates = {w: loader_rate(datamodule, w, args.batches) for w in (0, 2)}
    for w, r in rates.items():
        print(f"loader, {w} workers: {r:.0f} batches/s = {r / steps:.0f}x the step", flush=True)
    print(json.dumps({
        "batch_size": datamodule.batch_size, "seq_length": datamodule.seq_length,
        "step_batches_per_s": round(steps, 2),
        "loader_batches_per_s_0_workers": round(rates[0], 1), "loader_batches_per_s_2_workers": round(rates[2], 1),
        "ratio_0_workers": round(rates[0] / steps, 1), "ratio_2_workers": round(rates[2] / steps, 1),
        "target_ratio": 20,
    }))


if __name__ == "__main__":
    main()
