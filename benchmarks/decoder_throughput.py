"""Training-step throughput of lit-lm's decoder against the same-shape HuggingFace GPT2LMHeadModel, in the same run,
and model FLOPs utilisation against this machine's measured matrix-multiply peak.

For each shape and precision both models start from the same weights (ours is ``lit_lm.hf.from_hf`` of the HF one,
so the same architecture: biases, dropout 0.1, learned positions, GPT-2's 50257-token vocabulary) and train on the
same batch of random tokens: forward with next-token labels, backward, fused AdamW step. The "ours, crammed" column
(fp32 only) is the same shape as the crammed-gpt recipe trains it: no dropout, no Q/K/V biases. Steps are timed
alternately (ours, HF, ours, HF, ...) so a busy machine slows both alike; the median step is reported.

MFU is nanoGPT's estimate: 6N + 12 L H Q T FLOPs per token (N parameters without the position table, L layers,
H heads, Q head size, T sequence length), times tokens per second, over the best FLOP/s of a 1024^3 matmul
measured in this run in the same precision (fp32, or bf16 for the autocast rows: see ``matmul_peak``).

    python benchmarks/decoder_throughput.py                      # everything (about 11 minutes on one CPU core)
    python benchmarks/decoder_throughput.py --shapes 256x4 --precisions fp32 --steps 3

The last line is one JSON object with every row.
"""

import argparse
import json
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import replace

import torch
from step_timing import add_step_options, tokens_per_second

from lit_lm.callbacks.throughput import measure_matmul_flops
from lit_lm.hf import from_hf
from lit_lm.models import DecoderForCausalLM

VOCAB = 50257  # GPT-2's


def hf_model(hidden: int, layers: int, seq_length: int):
    import transformers

    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=hidden, n_layer=layers, n_head=hidden // 64,
                                     n_positions=max(1024, seq_length))
    return transformers.GPT2LMHeadModel(config)


def matmul_peak(precision: str, size: int = 1024, repeats: int = 5) -> float:
    """Best FLOP/s of a size^3 matrix multiply in this precision. For bf16 the faster of a plain bf16 ``mm`` and an
    fp32 ``F.linear`` under bf16 autocast: on CPUs without bf16 units they take different kernels, and the
    autocast one is what the models run (on this project's CPU ~15 GFLOP/s against ~1 for the plain one)."""
    if precision == "fp32":
        return measure_matmul_flops(torch.device("cpu"), torch.float32, size, repeats)
    plain = measure_matmul_flops(torch.device("cpu"), torch.bfloat16, size, repeats)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.functional.linear(a, b).float().sum().item()
        best = min(best, time.perf_counter() - start)
    return max(plain, 2 * size**3 / best)


def flops_per_token(model: DecoderForCausalLM, seq_length: int) -> float:
    """nanoGPT's 6N + 12LHQT (PaLM, Chowdhery et al. 2022, appendix B)."""
    config = model.config
    n = sum(p.numel() for p in model.parameters())
    if model.decoder.position_embedding is not None:
        n -= model.decoder.position_embedding.weight.numel()
    return 6 * n + 12 * config.num_layers * config.num_heads * config.head_dim * seq_length


def train_step(model, optimizer, ids, autocast) -> None:
    with autocast:
        if isinstance(model, DecoderForCausalLM):
            loss = model(ids, labels=ids).loss
        else:
            loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_options(parser)
    parser.add_argument("--no-crammed", action="store_true", help="skip the 'ours, crammed' column (fp32)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)

    load_before = os.getloadavg()[0]
    peaks = {p: matmul_peak(p) for p in args.precisions}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load_before:.1f}; measured "
          f"matmul peak: " + ", ".join(f"{p} {v / 1e9:.1f} GFLOP/s" for p, v in peaks.items()))
    print(f"{'shape':7} {'prec':5} {'batch':7} {'ours tok/s':>11} {'crammed':>8} {'HF tok/s':>9} {'speedup':>8} "
          f"{'ours MFU':>9} {'HF MFU':>7}")
    rows = []
    for shape in args.shapes:
        hidden, layers = (int(x) for x in shape.split("x"))
        reference = hf_model(hidden, layers, args.seq_length).train()
        ours = from_hf(reference).train()  # same architecture and weights
        crammed = DecoderForCausalLM(replace(ours.config, dropout=0.0, attention_dropout=0.0, qkv_bias=False)).train()
        crammed.load_state_dict(ours.state_dict(), strict=False)  # all but the Q/K/V biases it does not have
        per_token = flops_per_token(ours, args.seq_length)
        for precision in args.precisions:
            batch_size = args.bf16_batch_size if precision == "bf16" else args.batch_size
            ids = torch.randint(0, VOCAB, (batch_size, args.seq_length), generator=torch.Generator().manual_seed(0))
            models = {"ours": ours, "hf": reference}
            if precision == "fp32" and not args.no_crammed:  # (bf16 is too slow on CPU to afford a third model)
                models["crammed"] = crammed
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
            steps = max(2, args.steps - 1) if precision == "bf16" else args.steps
            tps = tokens_per_second(models, lambda m, opt: train_step(m, opt, ids, autocast), ids.numel(), steps,
                                    args.warmup)
            row = dict(shape=shape, precision=precision, batch=f"{batch_size}x{args.seq_length}",
                       ours_tokens_per_s=round(tps["ours"]),
                       ours_crammed_tokens_per_s=round(tps["crammed"]) if "crammed" in tps else None,
                       hf_tokens_per_s=round(tps["hf"]), speedup=round(tps["ours"] / tps["hf"], 2),
                       crammed_speedup=round(tps["crammed"] / tps["hf"], 2) if "crammed" in tps else None,
                       flops_per_token=per_token, peak_flops=round(peaks[precision]),
                       ours_mfu=round(tps["ours"] * per_token / peaks[precision], 3),
                       hf_mfu=round(tps["hf"] * per_token / peaks[precision], 3))
            rows.append(row)
            print(f"{shape:7} {precision:5} {row['batch']:7} {row['ours_tokens_per_s']:>11} "
                  f"{row['ours_crammed_tokens_per_s'] or '-':>8} {row['hf_tokens_per_s']:>9} {row['speedup']:>7}x "
                  f"{row['ours_mfu']:>9.1%} {row['hf_mfu']:>7.1%}", flush=True)
    target = 1.5
    summary = {"benchmark": "decoder_throughput", "torch": torch.__version__, "threads": torch.get_num_threads(),
               "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
               "peak_flops": {p: round(v) for p, v in peaks.items()}, "target": target, "rows": rows,
               "targets_met": {f"{r['shape']}-{r['precision']}": r["speedup"] >= target for r in rows}}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
