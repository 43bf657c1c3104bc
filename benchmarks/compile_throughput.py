"""Eager against ``torch.compile``: training-step throughput, compile time and reliability of the recipes' models.

For each recipe (its model, micro-batch and sequence shape read from its YAML) and precision, two copies of the
recipe's LightningModule start from the same weights: one with ``compile: false``, one with ``compile: true`` (so
``torch.compile(model.forward)`` exactly as ``PretrainingModule._compile_if`` does, with its fallback to eager). Both
train on the same batches the way the module trains: its forward with labels (masked-LM recipes: the recipe's mask
rate and sparse prediction), backward, the recipe's gradient clipping, its fused AdamW step with decay groups; the
bf16 rows run the forward under ``torch.autocast("cpu", dtype=torch.bfloat16)`` as Lightning's ``bf16-mixed`` does.
Steps alternate (eager, compiled, eager, ...) so a busy machine slows both alike; the median step is reported.

Compile time is what the compiled copy's warm-up steps took beyond its steady step (cold: every compiled model gets
an empty inductor cache dir and fresh in-memory caches). Reliability, per row:
  - loss: the first step's loss (identical weights and batch) and the largest difference over all timed steps;
  - recompiles: after training, the compiled module sees what a fit run can show it (another training batch,
    validation in eval mode under no_grad, the validation loader's smaller last batch at two sizes, a padded batch,
    then training again) and the graphs compiled at each event are counted (``torch._dynamo`` compilation metrics),
    with the eval-mode loss compared against the same weights run eagerly;
  - fallback: whether ``run_model`` gave up on the compiler and went on eagerly.

    # everything (about 27 minutes on one CPU core of a busy 2-core machine)
    python benchmarks/compile_throughput.py --threads 1 --steps 6 --warmup 2
    python benchmarks/compile_throughput.py --recipes configs/quickstart.yaml --precisions fp32 --steps 3

The last line is one JSON object with every row (eager and compiled side by side).
"""

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml

from lit_lm.models import TransformerConfig
from lit_lm.modules import CausalLMModule, MaskedLMModule
from lit_lm.modules.causal_lm import next_token_labels
from lit_lm.modules.optim import OptimizerConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["configs/quickstart.yaml", "configs/recipes/crammed-bert.yaml", "configs/recipes/crammed-gpt.yaml"]


def recipe_spec(path: str, vocab_size: int | None) -> dict:
    """What the benchmark needs of a recipe: its module class and arguments, micro-batch, sequence, clipping."""
    recipe = yaml.safe_load((ROOT / path).read_text())
    model, data = recipe["model"], recipe["data"]["init_args"]
    init = dict(model["init_args"])
    tokenizer = data.get("tokenizer") or {}
    vocab = vocab_size or tokenizer.get("vocab_size", 8192)  # the CLI links it from the tokenizer
    config = TransformerConfig(**{**init.get("config", {}), "vocab_size": vocab})
    masked = model["class_path"].endswith("MaskedLMModule")
    kwargs = dict(config=config, optimizer=OptimizerConfig(**init.get("optimizer", {})))
    if masked:
        kwargs["mask_rate"] = init.get("mask_rate", 0.15)
    else:
        kwargs["seq_length"] = data.get("seq_length", 128)
    return dict(name=Path(path).stem, cls=MaskedLMModule if masked else CausalLMModule, kwargs=kwargs,
                batch=data.get("batch_size", 16), seq=data.get("seq_length", 128), vocab=vocab,
                clip=recipe.get("trainer", {}).get("gradient_clip_val"), kind="encoder" if masked else "decoder",
                shape=f"{config.hidden_size}x{config.num_layers}")


def make_batch(module, spec: dict, rows: int, seed: int, padded: bool = False) -> dict:
    """One batch as the data module yields it (ids, attention mask), then as training_step feeds the model."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, spec["vocab"], (rows, spec["seq"]), generator=g)
    mask = torch.ones_like(ids)
    if padded:  # the store's last row can be padded (packing's pad_last)
        mask[-1, spec["seq"] // 2:] = 0
        ids[-1, spec["seq"] // 2:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if isinstance(module, MaskedLMModule):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inputs, labels = module._mask(ids)
        return dict(input_ids=inputs, attention_mask=mask, labels=labels)
    return dict(input_ids=ids, attention_mask=mask, labels=next_token_labels(batch))


def train_step(module, optimizer, batch: dict, autocast, clip: float | None) -> float:
    with autocast:
        out = module(**batch)  # the module's forward: run_model, compiled or not
        loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def compiled_graphs(forward: bool = True) -> list:
    """One entry per frame torch._dynamo compiled (a first compile or a recompile), oldest first; with ``forward``
    False, the backward graphs AOTAutograd compiled instead."""
    return [m for m in torch._dynamo.utils.get_compilation_metrics() if (m.is_forward is not False) == forward]


def reason(metrics) -> str:
    text = getattr(metrics, "recompile_reason", None) or ""
    return " ".join(text.split())[:120]


def compiles_per_frame(metrics: list) -> dict[str, int]:
    """How often each frame (code object) was compiled: torch._dynamo gives up on a frame, running it eagerly,
    after ``torch._dynamo.config.recompile_limit`` compiles."""
    counts: dict[str, int] = {}
    for m in metrics:
        frame = str(m.compile_id).split("/")[0]
        counts[frame] = counts.get(frame, 0) + 1
    return counts


def fresh_compiler_caches() -> None:
    """Cold compiles: forget compiled frames and in-memory kernels, point inductor at an empty cache dir."""
    torch._dynamo.reset()
    torch._inductor.utils.clear_inductor_caches()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-bench-")


def recompile_check(module, spec: dict, autocast, clip: float | None, optimizer) -> dict:
    """Graphs compiled at each event a fit run can show the compiled module after its first training steps."""
    events = {}
    eval_diffs = []

    def event(name: str, fn) -> None:
        before, before_backward = len(compiled_graphs()), len(compiled_graphs(forward=False))
        fn()
        new = compiled_graphs()[before:]
        events[name] = dict(graphs=len(new), backward_graphs=len(compiled_graphs(forward=False)) - before_backward,
                            reasons=sorted({reason(m) for m in new} - {""}))

    def validate(rows: int, seed: int, padded: bool = False):
        def run():
            batch = make_batch(module, spec, rows, seed, padded)
            module.eval()
            with torch.no_grad(), autocast:
                compiled = module(**batch).loss.float().item()
                eager = module.model(**batch).loss.float().item()  # the same weights, uncompiled
            module.train()
            eval_diffs.append(abs(compiled - eager))
        return run

    def train(rows: int, seed: int, padded: bool = False):
        return lambda: train_step(module, optimizer, make_batch(module, spec, rows, seed, padded), autocast, clip)

    b = spec["batch"]
    event("train_same_shape", train(b, 101))
    event("val_eval_no_grad", validate(b, 102))
    event("val_again", validate(b, 103))
    event(f"val_last_batch_{b // 2 + 1}", validate(b // 2 + 1, 104))
    event(f"val_last_batch_{max(1, b // 4)}", validate(max(1, b // 4), 105))
    event("val_padded_row", validate(b, 106, padded=True))
    event("train_padded_row", train(b, 107, padded=True))
    event("train_after_val", train(b, 108))
    return dict(events=events, eval_loss_max_abs_diff=max(eval_diffs),
                graphs_after_warmup=sum(e["graphs"] for e in events.values()))


def graph_break_reasons() -> dict[str, int]:
    return {" ".join(k.split())[:120]: v for k, v in torch._dynamo.utils.counters["graph_break"].items()}


def run_row(spec: dict, precision: str, steps: int, warmup: int, check: bool) -> dict:
    fresh_compiler_caches()
    torch.manual_seed(0)
    modules = {"eager": spec["cls"](**spec["kwargs"], compile=False).train()}
    modules["compiled"] = spec["cls"](**spec["kwargs"], compile=True).train()
    modules["compiled"].load_state_dict(modules["eager"].state_dict())
    optimizers = {name: m.configure_optimizers() for name, m in modules.items()}  # the recipe's fused AdamW
    batches = [make_batch(modules["eager"], spec, spec["batch"], seed) for seed in range(4)]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    torch._dynamo.utils.clear_compilation_metrics()
    torch._dynamo.utils.counters.clear()
    times = {name: [] for name in modules}
    losses = {name: [] for name in modules}
    for step in range(warmup + steps):
        for name, module in modules.items():  # interleaved: a busy machine slows both alike
            start = time.perf_counter()
            losses[name].append(train_step(module, optimizers[name], batches[step % len(batches)], autocast,
                                           spec["clip"]))
            times[name].append(time.perf_counter() - start)
    compiled = modules["compiled"]
    graphs, backward_graphs = compiled_graphs(), compiled_graphs(forward=False)
    median = {name: statistics.median(t[warmup:]) for name, t in times.items()}
    tokens = spec["batch"] * spec["seq"]
    row = dict(
        recipe=spec["name"], kind=spec["kind"], shape=spec["shape"], precision=precision,
        batch=f"{spec['batch']}x{spec['seq']}", vocab=spec["vocab"],
        eager_tokens_per_s=round(tokens / median["eager"]), compiled_tokens_per_s=round(tokens / median["compiled"]),
        speedup=round(median["eager"] / median["compiled"], 2),
        eager_step_s=round(median["eager"], 4), compiled_step_s=round(median["compiled"], 4),
        compile_s=round(sum(times["compiled"][:warmup]) - warmup * median["compiled"], 1),
        first_compiled_step_s=round(times["compiled"][0], 1),
        warmup_step_s=[round(t, 2) for t in times["compiled"][:warmup]],
        graphs_compiled=len(graphs), backward_graphs_compiled=len(backward_graphs),
        graph_breaks=sum(graph_break_reasons().values()),
        graph_break_reasons=graph_break_reasons(),
        first_loss=[round(losses["eager"][0], 5), round(losses["compiled"][0], 5)],
        first_loss_abs_diff=abs(losses["eager"][0] - losses["compiled"][0]),
        loss_max_abs_diff=max(abs(a - b) for a, b in zip(losses["eager"], losses["compiled"])),
        steps=steps,
    )
    if check:
        row["recompile_check"] = recompile_check(compiled, spec, autocast, spec["clip"], optimizers["compiled"])
    row["fell_back_to_eager"] = compiled._compiled_forward is None
    per_frame = compiles_per_frame(compiled_graphs())
    row["max_compiles_per_frame"] = max(per_frame.values(), default=0)
    row["recompile_limit"] = torch._dynamo.config.recompile_limit
    tolerance = 2e-2 if precision == "bf16" else 1e-3
    recompiles = row.get("recompile_check", {}).get("events", {})
    row["reliable"] = bool(
        not row["fell_back_to_eager"] and row["first_loss_abs_diff"] <= tolerance
        and row.get("recompile_check", {}).get("eval_loss_max_abs_diff", 0.0) <= tolerance
        and all(e["graphs"] == 0 for k, e in recompiles.items() if k in ("train_same_shape", "val_again",
                                                                          "train_after_val"))
        and row["max_compiles_per_frame"] < row["recompile_limit"]  # no frame near dynamo's give-up point
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=RECIPES, help="recipe YAML files (relative to the repo)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="override the tokenizer vocabulary of every recipe (default: each recipe's, 8192)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model (the compile happens here)")
    parser.add_argument("--no-check", action="store_true", help="skip the recompile check")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 is steadier on a machine shared with other jobs")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # the graph-break warnings: counted in the rows
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load_before:.1f}, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps, alternating eager/compiled")
    header = (f"{'recipe':14} {'kind':8} {'shape':6} {'prec':5} {'batch':7} {'eager tok/s':>11} {'comp tok/s':>10} "
              f"{'speedup':>7} {'compile s':>9} {'graphs':>6} {'breaks':>6} {'dloss@1':>8} {'recompiles':>10} "
              f"{'ok':>3}")
    print(header)
    rows = []
    for path in args.recipes:
        spec = recipe_spec(path, args.vocab_size)
        for precision in args.precisions:
            row = run_row(spec, precision, args.steps, args.warmup, not args.no_check)
            rows.append(row)
            check = row.get("recompile_check")
            recompiles = "-" if check is None else str(check["graphs_after_warmup"])
            print(f"{row['recipe']:14} {row['kind']:8} {row['shape']:6} {precision:5} {row['batch']:7} "
                  f"{row['eager_tokens_per_s']:>11} {row['compiled_tokens_per_s']:>10} {row['speedup']:>6}x "
                  f"{row['compile_s']:>9} {row['graphs_compiled']:>6} {row['graph_breaks']:>6} "
                  f"{row['first_loss_abs_diff']:>8.1e} {recompiles:>10} {'yes' if row['reliable'] else 'NO':>3}",
                  flush=True)
    for row in rows:  # where the graphs after warm-up came from
        if "recompile_check" in row:
            events = ", ".join(f"{k}={e['graphs']}" for k, e in row["recompile_check"]["events"].items())
            print(f"  {row['recipe']} {row['precision']}: {events}; eval |dloss| "
                  f"{row['recompile_check']['eval_loss_max_abs_diff']:.1e}; most compiles of one frame "
                  f"{row['max_compiles_per_frame']} (limit {row['recompile_limit']})")
    for reason_text in sorted({r for row in rows for r in row["graph_break_reasons"]}):
        print(f"  graph break: {reason_text}")
    summary = {"benchmark": "compile_throughput", "torch": torch.__version__, "threads": torch.get_num_threads(),
               "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # a shared machine?
               "steps": args.steps, "warmup": args.warmup, "seconds": round(time.perf_counter() - started),
               "rows": rows}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
