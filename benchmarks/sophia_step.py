"""A training step with Sophia-G beside AdamW (fused) on a recipe's model: what the curvature estimate costs.

One step = forward, backward and the optimizer step on a masked batch. Sophia's steps come in two kinds: the plain
ones, and every ``hessian_update_period``-th one, which also draws targets from the model's predictions and takes
the gradient of the loss at them (one more backward; ``lit_lm/modules/curvature.py``). The three kinds are timed
alternately (AdamW, Sophia plain, Sophia estimating, AdamW, ...), so a busy machine slows all alike; medians are
reported, and Sophia's mean step at k=10 (nine plain, one estimating) against AdamW's.

    python benchmarks/sophia_step.py                   # crammed-bert's model (hidden 256, 4 layers, 8192 tokens)
    python benchmarks/sophia_step.py --hidden 768 --layers 12 --vocab 32768 --batch 8 --steps 5   # BERT-base

The last line is one JSON object.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lit_lm

import torch  # noqa: E402

from lit_lm.models import EncoderForMaskedLM, TransformerConfig  # noqa: E402
from lit_lm.modules.curvature import sampled_cross_entropy  # noqa: E402
from lit_lm.modules.optim import OptimizerConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--period", type=int, default=10, help="Sophia's hessian_update_period for the mean step")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                               num_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden,
                               max_position_embeddings=args.seq, qkv_bias=False, sparse_prediction=True,
                               sparse_prediction_rate=0.25, dropout=0.0, attention_dropout=0.0)
    models = {name: EncoderForMaskedLM(config) for name in ("adamw", "sophia_plain", "sophia_estimating")}
    for model in models.values():
        model.load_state_dict(models["adamw"].state_dict())
    optimizers = {"adamw": OptimizerConfig(lr=1e-4).build(models["adamw"]),
                  # estimating on its first step only (untimed), then never
                  "sophia_plain": OptimizerConfig(name="sophia", lr=1e-4, hessian_update_period=10 ** 9
                                                  ).build(models["sophia_plain"]),
                  "sophia_estimating": OptimizerConfig(name="sophia", lr=1e-4, hessian_update_period=1
                                                       ).build(models["sophia_estimating"])}
    ids = torch.randint(5, args.vocab, (args.batch, args.seq))
    labels = torch.where(torch.rand(ids.shape) < 0.25, ids, -100)
    inputs = torch.where(labels != -100, 4, ids)

    def step(model, optimizer) -> float:
        start = time.perf_counter()
        out = model(inputs, labels=labels)
        if getattr(optimizer, "curvature_due", False):  # what PretrainingModule.sample_curvature does
            optimizer.add_sampled_loss(sampled_cross_entropy(out.logits, out.labels))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    times = {name: [] for name in models}
    for i in range(args.steps + 1):
        for name in times:
            seconds = step(models[name], optimizers[name])
            if i:  # the first allocates optimizer state
                times[name].append(seconds)
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    mean_sophia = ((args.period - 1) * ms["sophia_plain"] + ms["sophia_estimating"]) / args.period
    n_params = sum(p.numel() for p in models["adamw"].parameters())
    print(f"training step, {n_params / 1e6:.1f}M parameters, batch {args.batch}x{args.seq}: "
          f"AdamW {ms['adamw']:.0f} ms, "
          f"Sophia plain {ms['sophia_plain']:.0f} ms, Sophia estimating {ms['sophia_estimating']:.0f} ms; "
          f"Sophia's mean at k={args.period}: {mean_sophia:.0f} ms ({mean_sophia / ms['adamw']:.2f}x AdamW)")
    print(json.dumps({"benchmark": "sophia_step", "params": n_params, "batch": [args.batch, args.seq],
                      **{f"{name}_ms": round(value, 1) for name, value in ms.items()},
                      "period": args.period, "sophia_mean_ms": round(mean_sophia, 1),
                      "sophia_vs_adamw": round(mean_sophia / ms["adamw"], 3),
                      "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}"}))


if __name__ == "__main__":
    main()
