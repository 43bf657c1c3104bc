"""AdamW step time, torch's fused kernel against its default implementation, on a recipe's model.

The recipes leave ``model.optimizer.fused`` at null, which picks the fused kernel wherever torch has one; this shows
what that is worth on this machine. Both optimizers step the same parameters with the same gradients; steps are
timed alternately (fused, default, fused, ...) so a busy machine slows both alike; the median is reported.

    python benchmarks/budget_optimizer_step.py                     # the crammed-bert recipe's model
    python benchmarks/budget_optimizer_step.py --hidden 768 --layers 12 --vocab 32768 --steps 10   # BERT-base

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
from lit_lm.modules.optim import OptimizerConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    config = TransformerConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                               num_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden,
                               max_position_embeddings=128, qkv_bias=False)
    models = {name: EncoderForMaskedLM(config) for name in ("fused", "default")}
    models["default"].load_state_dict(models["fused"].state_dict())
    optimizers = {name: OptimizerConfig(fused=name == "fused").build(model) for name, model in models.items()}
    for model in models.values():
        for param in model.parameters():
            param.grad = torch.randn_like(param) * 1e-3
    times = {name: [] for name in models}
    for step in range(args.steps + 1):
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            if step:  # the first step allocates the optimizer state
                times[name].append(time.perf_counter() - start)
    n_params = sum(p.numel() for p in models["fused"].parameters())
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    print(f"AdamW step over {n_params / 1e6:.1f}M parameters: fused {ms['fused']:.1f} ms, "
          f"default {ms['default']:.1f} ms ({ms['default'] / ms['fused']:.1f}x)")
    print(json.dumps({"benchmark": "budget_optimizer_step", "params": n_params, "fused_ms": round(ms["fused"], 2),
                      "default_ms": round(ms["default"], 2), "speedup": round(ms["default"] / ms["fused"], 2),
                      "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}"}))


if __name__ == "__main__":
    main()
