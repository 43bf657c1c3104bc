"""The GPU check: every shipped recipe trains a few steps compiled under bf16-mixed and 16-mixed, and the BERT-base
training throughput and MFU of our encoder against transformers' BertForMaskedLM. Meant for a lent NVIDIA machine.

On the GPU machine, from the repository root (about 7 minutes on an H200, compiles included; ``--budget-s``, 450 by
default, caps it: recipe runs still going when it is spent are stopped and reported as ``timeout``):

    python3 benchmarks/gpu_check.py --out gpu_check.json

Its numbers (the pass/fail table per recipe and precision, the BERT-base tokens/s and MFU rows) go into
docs/measurements.md (its GPU section). This project's lent H200 has python3 with torch, lightning, torchmetrics,
tokenizers and transformers but not the three packages LightningCLI's signatures need, and no network; the
script names what is missing and stops. Bring them as wheels (pure Python, about 1 MB): once, in the checkout,

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .whl jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0

then run with ``.whl`` carried and ``timeout_s`` 600:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site &&
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log

Checks without a GPU:

    python benchmarks/gpu_check.py --dry-run          # lists the runs; every recipe parses with the run's overrides
    python benchmarks/gpu_check.py --device cpu --steps 1 --recipes configs/quickstart.yaml \\
        --precisions bf16-mixed --bert-shape 128x2 --start-batch 2 --max-batch 8 --bert-warmup 1 --bert-steps 2 \
        --jobs 1      # a CPU smoke run of both parts (about 4 minutes on 2 busy cores)

(a) Recipes: ``python train.py fit --config RECIPE --trainer.max_steps N --trainer.precision P
--model.init_args.compile true`` with a CSV logger, a fresh ``--trainer.default_root_dir`` and working directory per
run (the recipes' relative run folders land there), one sanity validation batch (the eval-mode compile), the default
embedded corpus. ``--jobs`` runs go at once. A run passes when it exits 0 and logged a finite ``train/loss``;
``fallback`` means it finished but ``model.compile`` fell back to eager (the warning is in its output); failures
keep the tail of their output. Recompiles are counted from ``TORCH_LOGS=recompiles``.

(b) BERT-base (12 x 768, sequence 128, vocabulary 30522): ours is ``lit_lm.hf.from_hf`` of a fresh
``BertForMaskedLM`` switched to sparse prediction (the recipes' mode, mask rate 0.15), the same weights as HF's;
both train (forward with labels, backward, fused AdamW) under bf16 autocast. The largest batch each fits is found by
doubling until out of memory; both are then timed at the largest batch both fit, steps alternating (ours, HF, ours
compiled, ...), median reported. MFU = FLOPs per step / step time / peak, with FLOPs from Lightning's
``measure_flops`` of each model's own step (``mfu``: what the hardware did; sparse prediction does less work) and
6 x parameters x tokens (``mfu_6n``: the usual model-FLOPs figure, the same work credited to both). The peak is
``--peak-tflops`` or the GPU's bf16 dense peak (H100/H200: 989 TFLOP/s); a measured 8192^3 bf16 matmul is printed
beside it.

The last line is one JSON object with every row (also written to ``--out``).
"""

import argparse
import concurrent.futures
import csv
import gc
import importlib.util
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEEDED = {"jsonargparse": "jsonargparse", "docstring_parser": "docstring-parser", "typeshed_client": "typeshed-client",
          "lightning": "lightning", "torchmetrics": "torchmetrics", "tokenizers": "tokenizers", "yaml": "pyyaml",
          "transformers": "transformers"}
DENSE_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}  # dense (not 2:4 sparse) bf16 tensor-core peaks


def recipes_default() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")
                  if p.parent.name not in ("base", "finetune", "ablations"))  # not pretraining recipes


def missing_packages() -> list[str]:
    return [pip_name for module, pip_name in NEEDED.items() if importlib.util.find_spec(module) is None]


# ---------------------------------------------------------------- (a) every recipe, compiled, a few steps

def run_command(recipe: str, precision: str, steps: int, device: str, run_dir: Path, print_config: bool = False):
    command = [
        sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / recipe),
        "--trainer.max_steps", str(steps), "--trainer.precision", precision,
        "--trainer.accelerator", "gpu" if device == "cuda" else "cpu", "--trainer.devices", "1",
        "--model.init_args.compile", "true",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.init_args.save_dir", str(run_dir), "--trainer.default_root_dir", str(run_dir),
        "--trainer.log_every_n_steps", "1", "--trainer.num_sanity_val_steps", "1",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
    ]
    return command + (["--print_config"] if print_config else [])


def logged_losses(run_dir: Path) -> dict:
    """The last finite train/loss and val/loss the CSV logger wrote, and perf/tokens_per_sec if logged."""
    found = {}
    for file in sorted(run_dir.rglob("metrics.csv")):
        with open(file) as f:
            for row in csv.DictReader(f):
                for key in ("train/loss", "val/loss", "perf/tokens_per_sec"):
                    value = row.get(key)
                    if value not in (None, ""):
                        found[key] = float(value)
    return found


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def run_recipe(recipe: str, precision: str, args, deadline: Deadline, stop: threading.Event) -> dict:
    row = dict(recipe=recipe, precision=precision, status="skipped", seconds=0.0)
    if stop.is_set() or deadline.left() < 20:
        row["error"] = "not started: the time budget was spent"
        return row
    run_dir = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=args.work_dir))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               TORCH_LOGS="recompiles", PYTHONUNBUFFERED="1",
               TORCHINDUCTOR_COMPILE_THREADS=str(max(1, (os.cpu_count() or 2) // args.jobs)))
    command = run_command(recipe, precision, args.steps, args.device, run_dir)
    start = time.monotonic()
    log = run_dir / "output.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=run_dir, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)  # its own group: a timeout ends its compile workers too
        try:
            code = process.wait(timeout=max(1.0, deadline.left()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    row["seconds"] = round(time.monotonic() - start, 1)
    text = log.read_text(errors="replace")
    row["recompiles"] = text.count("Recompiling function")
    row.update(logged_losses(run_dir))
    loss = row.get("train/loss")
    if code is None:
        row["status"] = "timeout"
    elif code != 0:
        row["status"] = "fail"
    elif loss is None or not math.isfinite(loss):
        row["status"] = "fail"
        row["error"] = "exited 0 but logged no finite train/loss"
    elif "torch.compile failed" in text:
        row["status"] = "fallback"  # trained, but eagerly
    else:
        row["status"] = "pass"
    if row["status"] in ("fail", "fallback", "timeout"):
        row["output_tail"] = text[-args.tail_chars:]
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        row["run_dir"] = str(run_dir)
    return row


def check_recipes(args, deadline: Deadline) -> list[dict]:
    runs = [(r, p) for r in args.recipes for p in args.precisions]
    # the GPU-scale recipes (12 layers, long compiles) first, so that the parallel runs end together
    runs.sort(key=lambda rp: not rp[0].startswith(("configs/encoder/", "configs/decoder/")))
    stop = threading.Event()
    rows = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_recipe, r, p, args, deadline, stop) for r, p in runs]
        for future in concurrent.futures.as_completed(futures):
            row = future.result()
            rows.append(row)
            loss = row.get("train/loss")
            print(f"  {row['recipe']:40} {row['precision']:10} {row['status']:8} {row['seconds']:>7}s "
                  f"loss {loss if loss is None else round(loss, 3)} recompiles {row.get('recompiles', '-')}",
                  flush=True)
    order = {rp: i for i, rp in enumerate((r, p) for r in args.recipes for p in args.precisions)}
    return sorted(rows, key=lambda row: order[(row["recipe"], row["precision"])])


def dry_run(args) -> list[dict]:
    """Every run's command, and whether each recipe parses with those overrides (``--print_config``, no training)."""
    rows = []
    work = Path(tempfile.mkdtemp(prefix="gpu-check-dry-"))

    def parse(recipe: str) -> dict:
        command = run_command(recipe, args.precisions[0], args.steps, args.device, work / "run", print_config=True)
        done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        ok = done.returncode == 0 and "compile: true" in done.stdout and f"max_steps: {args.steps}" in done.stdout
        return dict(recipe=recipe, parses=ok, **({} if ok else {"output_tail": (done.stdout + done.stderr)[-1500:]}))

    for recipe in args.recipes:
        for precision in args.precisions:
            print("  " + " ".join(run_command(recipe, precision, args.steps, args.device, Path("RUN_DIR"))
                                  ).replace(str(ROOT) + "/", ""))
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(parse, args.recipes):
            rows.append(row)
            print(f"  {row['recipe']:40} parses with the overrides: {'yes' if row['parses'] else 'NO'}", flush=True)
            if not row["parses"]:
                print(row["output_tail"])
    shutil.rmtree(work, ignore_errors=True)
    return rows


# ---------------------------------------------------------------- (b) BERT-base: ours against transformers

def bert_models(hidden: int, layers: int, vocab: int, mask_rate: float):
    import transformers

    from lit_lm.hf import from_hf
    from lit_lm.models import EncoderForMaskedLM

    config = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                                     max_position_embeddings=512)
    hf = transformers.BertForMaskedLM(config).train()
    dense = from_hf(hf)
    ours = EncoderForMaskedLM(replace(dense.config, sparse_prediction=True, sparse_prediction_rate=mask_rate))
    ours.load_state_dict(dense.state_dict())  # the same weights: ours in the recipes' mode, sparse prediction
    return ours.train(), hf


def masked_batch(vocab: int, batch: int, seq: int, rate: float, device):
    import torch

    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    chosen = torch.rand(batch, seq, generator=g) < rate
    labels = torch.where(chosen, ids, -100)
    inputs = torch.where(chosen, 4, ids)
    return inputs.to(device), labels.to(device)


def make_step(model, forward, optimizer, autocast):
    def step(inputs, labels) -> None:
        with autocast:
            loss = forward(input_ids=inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def largest_batch(step, optimizer, args, device) -> tuple[int | None, bool]:
    """The largest power-of-two batch (from --start-batch, at most --max-batch) whose step fits; and whether the
    search stopped at the cap rather than at an out-of-memory error."""
    import torch

    best, batch = None, min(args.start_batch, args.max_batch)
    while batch <= args.max_batch:
        fits = True
        try:
            step(*masked_batch(args.vocab, batch, args.seq_length, args.mask_rate, device))
            synchronize(device)
        except torch.OutOfMemoryError:
            fits = False
        if not fits:  # outside the except block, so the traceback's tensors are gone
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            return best, False
        best, batch = batch, batch * 2
    return best, True


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(model, forward_kwargs_fn, batch_sizes=(2, 4)) -> callable:
    """FLOPs of one training step (forward + backward) as an affine function of the batch, from Lightning's
    measure_flops at two small batches (the math attention kernel, so that attention is counted)."""
    from lightning.fabric.utilities.throughput import measure_flops
    from torch.nn.attention import SDPBackend, sdpa_kernel

    counts = []
    for b in batch_sizes:
        inputs, labels = forward_kwargs_fn(b)
        with sdpa_kernel(SDPBackend.MATH):
            counts.append(measure_flops(model, lambda: model(input_ids=inputs, labels=labels),
                                        loss_fn=lambda out: out.loss))
        model.zero_grad(set_to_none=True)
    slope = (counts[1] - counts[0]) / (batch_sizes[1] - batch_sizes[0])
    return lambda b: counts[0] + slope * (b - batch_sizes[0])


def peak_tflops(args, device) -> tuple[float | None, str]:
    import torch

    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak for a CPU (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, value in DENSE_BF16_TFLOPS.items():
        if key in name.upper():
            return value, f"{name}: bf16 dense peak"
    from lightning.fabric.utilities.throughput import get_available_flops

    flops = get_available_flops(device, torch.bfloat16)
    return (flops / 1e12, f"{name}: Lightning's table") if flops else (None, f"{name}: unknown peak")


def matmul_tflops(device, n: int = 8192, reps: int = 10) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e12


def check_bert(args, deadline: Deadline) -> dict:
    import torch

    device = torch.device(args.device)
    hidden, layers = (int(x) for x in args.bert_shape.split("x"))
    torch.manual_seed(0)
    ours, hf = bert_models(hidden, layers, args.vocab, args.mask_rate)
    ours.to(device), hf.to(device)
    n_params = sum(p.numel() for p in hf.parameters())  # tied embeddings counted once
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    models = {"ours": ours, "hf": hf}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for name, m in models.items()}
    steps = {name: make_step(m, m.forward, optimizers[name], autocast) for name, m in models.items()}
    result = dict(shape=args.bert_shape, seq_length=args.seq_length, vocab=args.vocab, mask_rate=args.mask_rate,
                  parameters=n_params, device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")

    max_batch = {}
    for name in models:
        best, capped = largest_batch(steps[name], optimizers[name], args, device)
        max_batch[name] = best
        result[f"{name}_max_batch"] = best
        result[f"{name}_max_batch_capped"] = capped
        print(f"  largest batch {name}: {best}{' (the --max-batch cap)' if capped else ''}", flush=True)
    batch = min(b for b in max_batch.values() if b) if all(max_batch.values()) else None
    if batch is None:
        result["error"] = "a model did not fit even --start-batch"
        return result
    result["batch"] = batch
    if not args.no_compile_bert:  # ours as model.compile: true runs it
        models["ours_compiled"] = ours
        compiled_forward = torch.compile(ours.forward)
        steps["ours_compiled"] = make_step(ours, compiled_forward, optimizers["ours"], autocast)
        start = time.perf_counter()
        try:
            steps["ours_compiled"](*masked_batch(args.vocab, batch, args.seq_length, args.mask_rate, device))
            synchronize(device)
            result["compile_s"] = round(time.perf_counter() - start, 1)
        except Exception as error:  # report and go on without the compiled column
            result["compile_error"] = f"{type(error).__name__}: {str(error)[:300]}"
            del models["ours_compiled"], steps["ours_compiled"]
            optimizers["ours"].zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    inputs, labels = masked_batch(args.vocab, batch, args.seq_length, args.mask_rate, device)
    times = {name: [] for name in models}
    for i in range(args.bert_warmup + args.bert_steps):
        if deadline.left() < 10:
            break
        for name in models:  # interleaved
            synchronize(device)
            start = time.perf_counter()
            steps[name](inputs, labels)
            synchronize(device)
            if i >= args.bert_warmup:
                times[name].append(time.perf_counter() - start)

    peak, peak_source = peak_tflops(args, device)
    result.update(peak_tflops=peak, peak_source=peak_source, matmul_tflops=matmul_tflops(device))
    flops = {}
    for name, model in (("ours", ours), ("hf", hf)):
        flops[name] = step_flops(model, lambda b: masked_batch(args.vocab, b, args.seq_length, args.mask_rate,
                                                                 device))(batch)
    flops["ours_compiled"] = flops["ours"]
    tokens = batch * args.seq_length
    rows = []
    for name, t in times.items():
        if not t:
            continue
        step_s = statistics.median(t)
        row = dict(model=name, batch=f"{batch}x{args.seq_length}", tokens_per_s=round(tokens / step_s),
                   step_s=round(step_s, 4), step_tflop=round(flops[name] / 1e12, 2), steps=len(t))
        if peak:
            row["mfu"] = round(flops[name] / step_s / (peak * 1e12), 4)
            row["mfu_6n"] = round(6 * n_params * tokens / step_s / (peak * 1e12), 4)
        rows.append(row)
    result["rows"] = rows
    by_name = {r["model"]: r for r in rows}
    if "ours" in by_name and "hf" in by_name:
        result["speedup"] = round(by_name["ours"]["tokens_per_s"] / by_name["hf"]["tokens_per_s"], 2)
    if "ours_compiled" in by_name and "hf" in by_name:
        result["compiled_speedup"] = round(by_name["ours_compiled"]["tokens_per_s"] / by_name["hf"]["tokens_per_s"], 2)
    del models, optimizers, steps, ours, hf
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="also write the final JSON object here")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run of the script")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the recipe runs and check that each recipe parses with their overrides; no training")
    parser.add_argument("--budget-s", type=float, default=450, help="wall-clock budget of the whole check")
    parser.add_argument("--skip-recipes", action="store_true")
    parser.add_argument("--skip-bert", action="store_true")
    g = parser.add_argument_group("(a) recipes")
    g.add_argument("--recipes", nargs="+", default=recipes_default(), help="default: configs/**/*.yaml")
    g.add_argument("--precisions", nargs="+", default=["bf16-mixed", "16-mixed"])
    g.add_argument("--steps", type=int, default=3, help="--trainer.max_steps (optimizer steps)")
    g.add_argument("--jobs", type=int, default=8, help="recipe runs at once")
    g.add_argument("--work-dir", default=None, help="where the run folders go (default: the system temp dir)")
    g.add_argument("--keep", action="store_true", help="keep the run folders")
    g.add_argument("--tail-chars", type=int, default=3000, help="output kept of a failed run")
    g = parser.add_argument_group("(b) BERT-base throughput")
    g.add_argument("--bert-shape", default="768x12", help="hidden x layers")
    g.add_argument("--seq-length", type=int, default=128)
    g.add_argument("--vocab", type=int, default=30522)
    g.add_argument("--mask-rate", type=float, default=0.15)
    g.add_argument("--start-batch", type=int, default=64)
    g.add_argument("--max-batch", type=int, default=8192)
    g.add_argument("--bert-warmup", type=int, default=3)
    g.add_argument("--bert-steps", type=int, default=10)
    g.add_argument("--no-compile-bert", action="store_true", help="skip the 'ours, compiled' row")
    g.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 dense peak (default: looked up)")
    args = parser.parse_args()

    missing = missing_packages()
    if missing:
        sys.exit(f"gpu_check: missing Python packages {missing}; install them (offline: carry their wheels, see "
                 f"/work/.library/device/README.md) and put them on PYTHONPATH.")
    started = time.monotonic()
    summary = {"benchmark": "gpu_check", "device": args.device, "python": sys.version.split()[0]}
    import torch

    summary["torch"] = torch.__version__
    if args.dry_run:
        print(f"dry run: {len(args.recipes)} recipes x {args.precisions} = {len(args.recipes) * len(args.precisions)} "
              f"runs, {args.jobs} at a time, then BERT {args.bert_shape} (seq {args.seq_length}, vocab {args.vocab})")
        summary["dry_run"] = dry_run(args)
        summary["seconds"] = round(time.monotonic() - started)
        print(json.dumps(summary))
        if args.out:
            args.out.write_text(json.dumps(summary, indent=1))
        sys.exit(0 if all(r["parses"] for r in summary["dry_run"]) else 1)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; use --device cpu for a smoke run or --dry-run.")
    if args.device == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(0)
    deadline = Deadline(args.budget_s)
    print(f"torch {torch.__version__}, device {summary.get('gpu', 'cpu')}, budget {args.budget_s:.0f}s", flush=True)

    if not args.skip_bert:
        print(f"(b) BERT {args.bert_shape}, seq {args.seq_length}, vocab {args.vocab}: ours (sparse prediction) "
              f"against transformers' BertForMaskedLM, bf16 autocast", flush=True)
        try:
            summary["bert"] = check_bert(args, Deadline(min(deadline.left(), 0.4 * args.budget_s)))
        except Exception as error:  # the recipe runs still go
            summary["bert"] = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
        bert = summary["bert"]
        if bert.get("rows"):
            print(f"\n{'model':14} {'batch':9} {'tokens/s':>10} {'step s':>8} {'TFLOP/step':>10} {'MFU':>7} "
                  f"{'MFU 6N':>7}")
            for r in bert["rows"]:
                mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
                mfu6 = f"{100 * r['mfu_6n']:.1f}%" if "mfu_6n" in r else "-"
                print(f"{r['model']:14} {r['batch']:9} {r['tokens_per_s']:>10} {r['step_s']:>8} "
                      f"{r['step_tflop']:>10} {mfu:>7} {mfu6:>7}")
            print(f"speedup ours/HF {bert.get('speedup')}x, compiled ours/HF {bert.get('compiled_speedup')}x, "
                  f"compile {bert.get('compile_s')}s; peak {bert['peak_tflops']} TFLOP/s ({bert['peak_source']}), "
                  f"measured bf16 matmul {bert['matmul_tflops'] and round(bert['matmul_tflops'])} TFLOP/s\n",
                  flush=True)
        else:
            print(f"  BERT check: {bert.get('error')}", flush=True)

    if not args.skip_recipes:
        runs = len(args.recipes) * len(args.precisions)
        print(f"(a) {runs} recipe runs, compiled, {args.steps} steps each, {args.jobs} at a time, "
              f"{deadline.left():.0f}s left", flush=True)
        rows = check_recipes(args, deadline)
        summary["recipes"] = rows
        print(f"\n{'recipe':40} " + " ".join(f"{p:>12}" for p in args.precisions))
        for recipe in args.recipes:
            cells = {r["precision"]: r for r in rows if r["recipe"] == recipe}
            print(f"{recipe:40} " + " ".join(f"{cells[p]['status']:>12}" for p in args.precisions))
        for r in rows:
            if r["status"] in ("fail", "fallback", "timeout"):
                print(f"\n--- {r['recipe']} {r['precision']}: {r['status']} {r.get('error', '')}\n"
                      f"{r.get('output_tail', '')[-1500:]}")
        summary["recipes_passed"] = sum(r["status"] == "pass" for r in rows)
        summary["recipes_run"] = len(rows)
    summary["seconds"] = round(time.monotonic() - started)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
