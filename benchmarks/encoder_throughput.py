"""Training-step throughput of lit-lm's encoder against the same-shape HuggingFace model, in the same run.

For each family (BERT, DeBERTa-v3), shape and precision, both models start from the same weights (ours is
``lit_lm.hf.from_hf`` of the HF one) and train on the same batch with the same masking: forward with labels,
backward, AdamW step. Ours runs as the recipes do, with sparse prediction; the "ours, dense" column switches sparse
prediction off to show what the rest (SDPA, fused Q/K/V, no gathers) is worth alone. Steps are timed alternately
(ours, HF, ours, HF, ...) so a busy machine slows both alike; the median step is reported.

    python benchmarks/encoder_throughput.py                     # everything (about 40 minutes on 2 CPU cores)
    python benchmarks/encoder_throughput.py --families bert --shapes 256x4 --precisions fp32 --steps 3

The last line is one JSON object with every row.
"""

import argparse
import json
import os
import warnings
from contextlib import nullcontext
from dataclasses import replace

import torch
from step_timing import add_step_options, tokens_per_second

from lit_lm.hf import from_hf
from lit_lm.models import EncoderForMaskedLM

FAMILIES = {
    # published vocabularies and the settings of bert-base and deberta-v3-base
    "bert": dict(hf_class="BertForMaskedLM", config_class="BertConfig", vocab_size=30522, kwargs={}),
    "deberta": dict(hf_class="DebertaV2ForMaskedLM", config_class="DebertaV2Config", vocab_size=128100, kwargs=dict(
        relative_attention=True, pos_att_type="p2c|c2p", position_buckets=256, share_att_key=True,
        norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7)),
}


def hf_model(family: str, hidden: int, layers: int, seq_length: int, vocab_size: int | None = None):
    import transformers

    spec = FAMILIES[family]
    config = getattr(transformers, spec["config_class"])(
        vocab_size=vocab_size or spec["vocab_size"], hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, intermediate_size=4 * hidden, max_position_embeddings=max(512, seq_length),
        **spec["kwargs"])
    return getattr(transformers, spec["hf_class"])(config)


def masked_batch(vocab: int, batch: int, seq: int, rate: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    chosen = torch.rand(batch, seq, generator=g) < rate
    labels = torch.where(chosen, ids, -100)
    inputs = torch.where(chosen, 4, ids)  # every chosen token becomes [MASK]: the same masking for both models
    return inputs, labels


def train_step(model, optimizer, inputs, labels, autocast) -> None:
    with autocast:
        if isinstance(model, EncoderForMaskedLM):
            loss = model(inputs, labels=labels).loss
        else:
            loss = model(input_ids=inputs, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    add_step_options(parser)
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="vocabulary of every model (default: each family's published one)")
    parser.add_argument("--mask-rate", type=float, default=0.15)
    parser.add_argument("--no-dense", action="store_true", help="skip the 'ours, dense prediction' column (fp32)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)

    load_before = os.getloadavg()[0]
    rows = []
    header = (f"{'family':8} {'shape':7} {'prec':5} {'batch':7} {'ours tok/s':>11} {'dense tok/s':>11} {'HF tok/s':>9} "
              f"{'speedup':>8}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load_before:.1f}")
    print(header)
    for family in args.families:
        for shape in args.shapes:
            hidden, layers = (int(x) for x in shape.split("x"))
            reference = hf_model(family, hidden, layers, args.seq_length, args.vocab_size).train()
            dense = from_hf(reference).train()  # same weights; sparse prediction off, as HF
            ours = EncoderForMaskedLM(replace(dense.config, sparse_prediction=True,
                                              sparse_prediction_rate=args.mask_rate)).train()
            ours.load_state_dict(dense.state_dict())
            for precision in args.precisions:
                batch_size = args.bf16_batch_size if precision == "bf16" else args.batch_size
                inputs, labels = masked_batch(reference.config.vocab_size, batch_size, args.seq_length, args.mask_rate)
                models = {"ours": ours, "hf": reference}
                if precision == "fp32" and not args.no_dense:  # (bf16 is too slow on CPU to afford a third model)
                    models["ours_dense"] = dense
                autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
                steps = max(2, args.steps - 1) if precision == "bf16" else args.steps
                tps = tokens_per_second(models, lambda m, opt: train_step(m, opt, inputs, labels, autocast),
                                        inputs.numel(), steps, args.warmup)
                row = dict(family=family, shape=shape, precision=precision, batch=f"{batch_size}x{args.seq_length}",
                           ours_tokens_per_s=round(tps["ours"]),
                           ours_dense_tokens_per_s=round(tps["ours_dense"]) if "ours_dense" in tps else None,
                           hf_tokens_per_s=round(tps["hf"]), speedup=round(tps["ours"] / tps["hf"], 2))
                rows.append(row)
                dense_tps = row["ours_dense_tokens_per_s"] or "-"
                print(f"{family:8} {shape:7} {precision:5} {row['batch']:7} {row['ours_tokens_per_s']:>11} "
                      f"{dense_tps:>11} "
                      f"{row['hf_tokens_per_s']:>9} {row['speedup']:>7}x", flush=True)
    targets = {"bert": 1.5, "deberta": 2.0}
    summary = {"benchmark": "encoder_throughput", "torch": torch.__version__, "threads": torch.get_num_threads(),
               "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # a shared machine?
               "mask_rate": args.mask_rate, "vocab_size": args.vocab_size,
               "targets": targets, "rows": rows,
               "targets_met": {f"{r['family']}-{r['shape']}-{r['precision']}": r["speedup"] >= targets[r["family"]]
                               for r in rows}}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
