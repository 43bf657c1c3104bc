"""The peer row of an ablation: what users would otherwise run, transformers' standard masked-LM recipe, trained
under the same budget (wall-clock seconds or optimizer steps) on the same tokenized rows as a lit-lm variant.

    python -m lit_lm.ablate.hf_peer --config RUN.yaml (--seconds S | --steps N) --heldout HELDOUT.pt --out DIR

``RUN.yaml`` is a whole resolved lit-lm config (``lit_lm.cli.resolved_config``). Its ``data`` section builds (or
reuses) the same cached store, so the peer trains on the same tokenizer and rows, in the same order as a lit-lm run
(the store's seeded first-epoch permutation, served sequentially), for at most one epoch. What the peer runs is
transformers' default way, not lit-lm's:

- ``BertForMaskedLM`` at the base's shape (hidden size, layers, heads, intermediate size, positions; the vocabulary
  is the tokenizer's); everything else is ``BertConfig``'s defaults: post-LN, dropout 0.1, GELU, two token types,
  output matrix tied to the input embeddings.
- ``transformers.Trainer`` with ``DataCollatorForLanguageModeling`` (15% of the tokens masked, 80/10/10), the
  Trainer's default AdamW, BERT's published settings (Devlin et al. 2018, and the Adam epsilon of its code):
  ``BERT_SETTINGS``; warmup over the first 1% of the steps (rounded down), then linear decay to zero
  (``lr_scheduler_type linear``); gradient clipping at 1.0 (the Trainer's default and BERT's code); the base's
  effective batch (``data.batch_size`` times the accumulation that reaches the ``BatchSizeRamp`` target, or
  ``trainer.accumulate_grad_batches`` without a ramp); mixed precision as lit-lm's ``trainer.precision`` resolves
  (bf16 where ``auto_precision`` says bf16-mixed, fp16 for 16-mixed on a GPU, else fp32); no evaluation by the
  Trainer; the seed is the config's ``seed_everything``. One fix: an accumulated batch's loss is the mean of its
  micro-batches' losses, where this Trainer would sum them for BertForMaskedLM (huggingface/transformers#47688).
- The budget is ``--seconds`` of training only: data preparation, model building and the calibration below are
  outside it, as lit-lm's ``Timer`` counts. ``BudgetCallback`` stops training at the first optimizer step after the
  budget is spent. So that warmup-then-decay ends at the budget, ``max_steps`` is estimated beforehand from a timed
  calibration (a few micro-batch steps of a throwaway copy of the model, times the accumulation); ``result.json``
  says what was estimated. Or the budget is ``--steps N``: ``max_steps`` is N (at most one epoch), no calibration,
  no time stop; the training seconds are only measured.
- Every ``--eval-every`` seconds of training (with ``--steps``: optimizer steps; default a tenth of the budget) and
  at the end, with the budget clock paused, the held-out set is scored: mean cross-entropy over every label != -100,
  in fp32.

Files written into ``--out``: ``curve.csv`` (step, train_seconds, tokens_seen, heldout_loss), ``model/``
(``save_pretrained`` plus the tokenizer as transformers files; written to a temporary folder, then renamed) and,
last, ``result.json`` (``RESULT_KEYS``). A folder holding ``result.json`` is a finished run. There is no resuming:
an interrupted peer run simply starts again from scratch. ``run_hf_peer`` launches this module as a subprocess.

It needs the ``peer`` extra: ``pip install 'lit-lm[peer]'`` (transformers and accelerate).
"""

import argparse
import copy
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml

from lit_lm.checkpoint import write_text_atomically

if TYPE_CHECKING:
    from lit_lm.data.store import TokenStore

PEER_PACKAGES = ("transformers", "accelerate")
INSTALL_HINT = "pip install 'lit-lm[peer]'  (or: pip install transformers accelerate)"
# BERT's pretraining settings (Devlin et al. 2018, section A.2; eps and clipping from its code, optimization.py)
BERT_SETTINGS = {"learning_rate": 1e-4, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-6,
                 "weight_decay": 0.01, "warmup_fraction": 0.01, "lr_scheduler_type": "linear", "max_grad_norm": 1.0}
MLM_PROBABILITY = 0.15  # BERT's masking rate; the collator replaces 80% with [MASK], 10% random, 10% kept
CURVE_COLUMNS = ("step", "train_seconds", "tokens_seen", "heldout_loss")
RESULT_KEYS = ("steps", "train_seconds", "tokens_seen", "tokens_counted", "tokens_per_sec", "heldout_loss",
               "parameters", "precision", "precision_reason", "batch_size", "micro_batch_size",
               "gradient_accumulation_steps", "budget", "max_steps", "max_steps_estimate", "stopped_by", "lr_schedule",
               "model")
TOKENS_COUNTED = "non-padding tokens (attention-mask sum) of every row in a finished optimizer step, as ThroughputMFU"
TAIL_LINES = 40
CALIBRATION_SHARE = 0.05  # the calibration times micro-batches until they add up to this share of the budget


class PeerError(RuntimeError):
    """The peer run failed; the message ends with the tail of its log."""


def require_peer_packages() -> None:
    """Import transformers and accelerate, or raise an ImportError saying how to install them."""
    missing = []
    for name in PEER_PACKAGES:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"the HuggingFace peer run needs {' and '.join(missing)} (transformers' Trainer needs "
                          f"accelerate): {INSTALL_HINT}")


# ---- the base's settings ----
def _callback(config: dict, name: str) -> dict | None:
    return next((c for c in config["trainer"].get("callbacks") or [] if c["class_path"].endswith(name)), None)


def batch_sizes(config: dict) -> tuple[int, int]:
    """The micro-batch and the accumulation of the base's effective batch: the BatchSizeRamp's target (in whole
    micro-batches), or ``trainer.accumulate_grad_batches`` without a ramp."""
    micro = int(config["data"]["init_args"].get("batch_size", 32))
    ramp = _callback(config, "BatchSizeRamp")
    if ramp is not None:
        return micro, max(1, int(ramp["init_args"]["target_batch_size"]) // micro)
    return micro, int(config["trainer"].get("accumulate_grad_batches") or 1)


def training_precision(config: dict) -> tuple[str, str]:
    """The lit-lm precision the base runs at (``auto`` resolved by ``auto_precision``) and why."""
    from lit_lm.precision import auto_precision

    precision = str(config["trainer"].get("precision") or "auto")
    if precision == "auto":
        return auto_precision(config["trainer"].get("accelerator", "auto"))
    return precision, "trainer.precision of the config"


def ran_precision(arguments: dict) -> str:
    """The lit-lm name of what TrainingArguments' flags run: bf16-mixed, 16-mixed or 32-true."""
    return "bf16-mixed" if arguments.get("bf16") else "16-mixed" if arguments.get("fp16") else "32-true"


def precision_arguments(precision: str) -> dict:
    """TrainingArguments' mixed-precision flags for a lit-lm precision: bf16 (on a CPU too, where auto_precision
    measured it faster), fp16 only on a GPU, else fp32."""
    if precision.startswith("bf16"):
        return {"bf16": True} if torch.cuda.is_available() else {"bf16": True, "use_cpu": True}
    if precision.startswith("16") and torch.cuda.is_available():
        return {"fp16": True}
    return {}


def load_data(config: dict):
    """The base's PretrainingDataModule (any LightningDataModule class the config names), store built or reused."""
    import lightning as L
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    datamodule = parser.instantiate_classes(parser.parse_object({"data": config["data"]})).data
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


# ---- data: the store's rows in lit-lm's first-epoch order ----
class OrderedRows(torch.utils.data.IterableDataset):
    """The first ``limit`` rows of a store in the order a lit-lm run trains on them (epoch 0's seeded permutation),
    one example per row with BERT's ``special_tokens_mask`` (as transformers' run_mlm example tokenizes), and the
    real-token count of every row served, in order (``lengths``)."""

    def __init__(self, store: "TokenStore", seed: int, special_ids: list[int], limit: int, chunk: int = 256) -> None:
        self.store, self.seed, self.limit, self.chunk = store, seed, limit, chunk
        self.special_ids = torch.tensor(special_ids)
        self.lengths: list[int] = []

    def __iter__(self):
        from lit_lm.data.streaming import Permutation, as_batch, epoch_seed

        self.lengths = []
        permutation = Permutation(len(self.store), epoch_seed(self.seed, 0))
        for first in range(0, self.limit, self.chunk):
            tokens, lengths = self.store.read(permutation(np.arange(first, min(first + self.chunk, self.limit))))
            batch = as_batch(tokens, lengths)
            special = torch.isin(batch["input_ids"], self.special_ids).long()
            for i in range(len(tokens)):
                self.lengths.append(int(lengths[i]))
                yield {"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i],
                       "special_tokens_mask": special[i]}


# ---- held-out scoring ----
def load_heldout(path: str | Path) -> dict:
    heldout = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in ("inputs", "labels", "attention_mask") if k not in heldout]
    if missing:
        raise ValueError(f"--heldout {path}: missing {missing}; it must hold inputs, labels and attention_mask.")
    return heldout


@torch.no_grad()
def heldout_loss(model, heldout: dict, batch_size: int = 64) -> float:
    """Mean cross-entropy (fp32) of a masked-LM over every held-out label != -100, whatever its class: a
    transformers model or a lit-lm one, both called ``model(input_ids, attention_mask=...)`` with ``.logits``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(heldout["inputs"]), batch_size):
        part = slice(start, start + batch_size)
        labels = heldout["labels"][part].to(device)
        mask = heldout["attention_mask"][part].to(device)
        logits = model(heldout["inputs"][part].to(device), attention_mask=mask).logits
        total += torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                                   reduction="sum").item()
        count += int((labels != -100).sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("the held-out set has no scored label (every label is -100).")
    return total / count


# ---- the budget ----
def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _transformers_callback():
    from transformers import TrainerCallback

    class BudgetCallback(TrainerCallback):
        """Counts training seconds (paused while scoring), stops at the first optimizer step after ``seconds`` (None:
        no time stop), scores the held-out set every ``eval_every`` seconds (optimizer steps with ``by_steps``) and
        at the end, and appends each point to ``curve``."""

        def __init__(self, seconds: float | None, eval_every: float, heldout: dict, rows: OrderedRows,
                     rows_per_step: int, curve: Path, eval_batch_size: int, by_steps: bool = False) -> None:
            self.seconds, self.eval_every, self.heldout, self.rows = seconds, eval_every, heldout, rows
            self.by_steps = by_steps
            self.rows_per_step, self.curve, self.eval_batch_size = rows_per_step, curve, eval_batch_size
            self.elapsed, self.started, self.next_eval = 0.0, None, eval_every
            self.tokens_seen, self.rows_counted, self.last_step, self.stopped_by = 0, 0, -1, "max_steps"
            self.points: list[dict] = []

        def clock(self) -> float:
            return self.elapsed + (time.perf_counter() - self.started if self.started is not None else 0.0)

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def _count_tokens(self, step: int) -> None:
            done = step * self.rows_per_step  # rows whose gradients reached an optimizer step
            self.tokens_seen += sum(self.rows.lengths[self.rows_counted:done])
            self.rows_counted = done

        def _score(self, model, step: int) -> None:
            _sync()
            self.elapsed, self.started = self.clock(), None  # pause the budget clock
            point = {"step": step, "train_seconds": round(self.elapsed, 3), "tokens_seen": self.tokens_seen,
                     "heldout_loss": heldout_loss(model, self.heldout, self.eval_batch_size)}
            self.points.append(point)
            with open(self.curve, "a", newline="") as f:
                csv.DictWriter(f, CURVE_COLUMNS).writerow(point)
            print(f"peer: step {step}, {point['train_seconds']:.1f} s, {point['tokens_seen']} tokens, "
                  f"held-out loss {point['heldout_loss']:.4f}", flush=True)
            self.last_step = step
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self._count_tokens(state.global_step)
            now = self.clock()
            if self.seconds is not None and now >= self.seconds:
                control.should_training_stop, self.stopped_by = True, "time"
            done = state.global_step if self.by_steps else now  # how far through the budget, in its own unit
            if done >= self.next_eval or control.should_training_stop or state.global_step >= state.max_steps:
                self._score(model, state.global_step)
                while self.next_eval <= done:
                    self.next_eval += self.eval_every

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if self.last_step != state.global_step:
                self._score(model, state.global_step)
            _sync()
            self.elapsed, self.started = self.clock(), None

    return BudgetCallback


def _step_timer(limit: float):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """The seconds of each optimizer step after the first (which warms up kernels and allocators); stops
        training once the timed steps add up to ``limit`` seconds."""

        def __init__(self) -> None:
            self.last, self.durations = None, []

        def on_step_begin(self, args, state, control, **kwargs):
            if self.last is None and state.global_step == 1:
                _sync()
                self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step > 1:
                _sync()
                now = time.perf_counter()
                self.durations.append(now - self.last)
                self.last = now
                control.should_training_stop = control.should_training_stop or sum(self.durations) >= limit

    return StepTimer()


# ---- the run ----
def build_model(datamodule, model_config: dict, seed: int):
    """``BertForMaskedLM`` at the base's shape, every other setting BertConfig's default; seeded initialisation."""
    from transformers import BertConfig, BertForMaskedLM, set_seed

    set_seed(seed)
    config = BertConfig(vocab_size=datamodule.vocab_size, hidden_size=model_config["hidden_size"],
                        num_hidden_layers=model_config["num_layers"], num_attention_heads=model_config["num_heads"],
                        intermediate_size=model_config["intermediate_size"],
                        max_position_embeddings=model_config["max_position_embeddings"],
                        pad_token_id=datamodule.pad_token_id)
    model = BertForMaskedLM(config)
    # Its forward takes **kwargs but its loss ignores num_items_in_batch, and Trainer, reading **kwargs as support,
    # then skips dividing by the accumulation steps: the loss and gradients grow with the accumulation
    # (huggingface/transformers#47688). Saying it does not take them restores the mean over the accumulated batch.
    model.accepts_loss_kwargs = False
    return model


def hf_tokenizer(datamodule):
    """The run's tokenizer as a ``PreTrainedTokenizerFast`` with its family's special tokens."""
    from transformers import PreTrainedTokenizerFast

    from lit_lm.hf.tokenizer import special_tokens

    tokenizer = datamodule.tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=datamodule.seq_length,
                                   **special_tokens(tokenizer))


def warmup_steps(max_steps: int) -> int:
    """BERT's 1% warmup in whole steps, rounded down: none below 100 steps (transformers' linear warmup gives its
    first step a learning rate of 0, a whole step lost in a short run)."""
    return math.floor(BERT_SETTINGS["warmup_fraction"] * max_steps)


def _training_arguments(folder: Path, seed: int, micro: int, accumulation: int, max_steps: int, precision: str,
                        log_every: int):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(folder), max_steps=max_steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation, learning_rate=BERT_SETTINGS["learning_rate"],
        adam_beta1=BERT_SETTINGS["adam_beta1"], adam_beta2=BERT_SETTINGS["adam_beta2"],
        adam_epsilon=BERT_SETTINGS["adam_epsilon"], weight_decay=BERT_SETTINGS["weight_decay"],
        max_grad_norm=BERT_SETTINGS["max_grad_norm"], lr_scheduler_type=BERT_SETTINGS["lr_scheduler_type"],
        warmup_steps=warmup_steps(max_steps), eval_strategy="no",
        save_strategy="no", report_to="none", logging_steps=log_every, disable_tqdm=True, seed=seed,
        data_seed=seed, dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
        **precision_arguments(precision))


def calibrate(model, collator, rows_args: tuple, micro: int, precision: str, seed: int, steps: int, limit: float,
              folder: Path) -> tuple[float, int]:
    """Seconds per micro-batch (forward, backward and an optimizer step): the median of up to ``steps`` timed steps
    of one micro-batch (after one untimed), fewer once they add up to ``limit`` seconds, of a throwaway copy of the
    model on the run's first rows; and how many were timed."""
    from transformers import Trainer

    timer = _step_timer(limit)
    args = _training_arguments(folder, seed, micro, 1, steps + 1, precision, log_every=10**9)
    Trainer(model=copy.deepcopy(model), args=args, train_dataset=OrderedRows(*rows_args), data_collator=collator,
            callbacks=[timer]).train()
    return float(np.median(timer.durations)), len(timer.durations)


def train_peer(config: dict, seconds: float | None, heldout_path: Path, out: Path, eval_every: float | None = None,
               calibration_steps: int = 5, eval_batch_size: int = 64, max_steps: int | None = None) -> dict:
    """Train the peer for ``seconds`` of training, or for ``max_steps`` optimizer steps (then ``seconds`` is None),
    and write ``out``'s files (module docstring); its result."""
    if (seconds is None) == (max_steps is None):
        raise ValueError("give the peer one budget: --seconds or --steps.")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"--seconds must be > 0, got {seconds}.")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"--steps must be >= 1, got {max_steps}.")
    heldout = load_heldout(heldout_path)  # a wrong path fails at once, before the slow imports
    require_peer_packages()
    from transformers import DataCollatorForLanguageModeling, Trainer

    eval_every = eval_every or (seconds / 10 if max_steps is None else max(1, max_steps // 10))
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("trainer-*"), *out.glob(".model-*")]:  # what an interrupted run left
        shutil.rmtree(stale)
    datamodule = load_data(config)
    seed = int(config.get("seed_everything") or 0)
    micro, accumulation = batch_sizes(config)
    rows_per_step = micro * accumulation
    one_epoch = len(datamodule.train_store) // rows_per_step
    if one_epoch < 1:
        raise ValueError(f"the training split holds {len(datamodule.train_store)} rows, fewer than one batch of "
                         f"{rows_per_step} (data.batch_size x accumulation); add text to data.paths.")
    precision, reason = training_precision(config)
    if ran_precision(precision_arguments(precision)) != precision:
        reason += f"; the base's {precision} runs as {ran_precision(precision_arguments(precision))} here"
        precision = ran_precision(precision_arguments(precision))
    tokenizer = hf_tokenizer(datamodule)
    model = build_model(datamodule, config["model"]["init_args"]["config"], seed)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=MLM_PROBABILITY)
    rows_args = (datamodule.train_store, datamodule.seed, datamodule.special_token_ids, one_epoch * rows_per_step)
    scratch = Path(tempfile.mkdtemp(prefix="trainer-", dir=out))
    budget = {"kind": "seconds", "value": seconds} if max_steps is None else {"kind": "steps", "value": max_steps}
    try:
        if max_steps is None:
            micro_seconds, timed = calibrate(model, collator, rows_args, micro, precision, seed, calibration_steps,
                                             seconds * CALIBRATION_SHARE, scratch)
            step_seconds = micro_seconds * accumulation  # the optimizer's own step, counted each time, is the noise
            max_steps = max(1, min(one_epoch, math.floor(seconds / step_seconds)))
            estimate = {"seconds_per_micro_batch": round(micro_seconds, 5), "timed_micro_batches": timed,
                        "seconds_per_step": round(step_seconds, 5), "one_epoch_steps": one_epoch,
                        "capped_by_epoch": max_steps == one_epoch}
            print(f"peer: {micro_seconds:.4f} s per micro-batch over {timed} timed, so {step_seconds:.4f} s per "
                  f"optimizer step of {accumulation}; max_steps {max_steps} (one epoch: {one_epoch})", flush=True)
        else:  # a budget of steps: nothing to estimate, at most one epoch
            max_steps, estimate = min(one_epoch, max_steps), None
            print(f"peer: max_steps {max_steps} (one epoch: {one_epoch})", flush=True)
        curve = out / "curve.csv"
        with open(curve, "w", newline="") as f:
            csv.DictWriter(f, CURVE_COLUMNS).writeheader()
        rows = OrderedRows(*rows_args)
        clock = _transformers_callback()(seconds, eval_every, heldout, rows, rows_per_step, curve, eval_batch_size,
                                         by_steps=budget["kind"] == "steps")
        args = _training_arguments(scratch, seed, micro, accumulation, max_steps, precision,
                                   log_every=max(1, max_steps // 20))
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[clock])
        state = trainer.train()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    model = trainer.model
    save_model(model, datamodule, out / "model")
    steps = state.global_step
    result = {
        "steps": steps, "train_seconds": round(clock.elapsed, 3), "tokens_seen": clock.tokens_seen,
        "tokens_counted": TOKENS_COUNTED, "tokens_per_sec": round(clock.tokens_seen / clock.elapsed, 1),
        "heldout_loss": clock.points[-1]["heldout_loss"],
        "parameters": sum(p.numel() for p in model.parameters()), "precision": precision, "precision_reason": reason,
        "batch_size": rows_per_step, "micro_batch_size": micro, "gradient_accumulation_steps": accumulation,
        "budget": budget, "max_steps": max_steps, "max_steps_estimate": estimate,
        "stopped_by": "epoch" if clock.stopped_by == "max_steps" and max_steps == one_epoch else clock.stopped_by,
        "lr_schedule": {**BERT_SETTINGS, "warmup_steps": args.warmup_steps,
                        "optimizer": getattr(args.optim, "value", str(args.optim)),
                        "mlm_probability": MLM_PROBABILITY, "seed": seed,
                        "accumulated_loss": "the mean of the micro-batches' mean losses (transformers#47688)",
                        "source": "BERT (Devlin et al. 2018): lr 1e-4, betas (0.9, 0.999), weight decay 0.01, "
                                  "1% warmup then linear decay; eps 1e-6 and clipping 1.0 as in its code"},
        "model": "model",
    }
    write_text_atomically(out / "result.json", json.dumps(result, indent=2) + "\n")
    return result


def save_model(model, datamodule, folder: Path) -> None:
    """``save_pretrained`` plus the tokenizer files into ``folder``, written beside it and renamed into place."""
    from lit_lm.hf.tokenizer import save_tokenizer

    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    staging.chmod(0o755)  # mkdtemp's folder is private; the model folder is not
    model.save_pretrained(staging)
    save_tokenizer(datamodule.tokenizer, staging, model_max_length=datamodule.seq_length)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)


# ---- for the ablation runner ----
def run_hf_peer(config: dict, seconds: float | None, heldout: str | Path, out: str | Path,
                eval_every: float | None = None, calibration_steps: int = 5, timeout: float | None = None,
                max_steps: int | None = None) -> dict:
    """Train the peer in a subprocess (``python -m lit_lm.ablate.hf_peer``, logging to ``out/train.log``) for
    ``seconds`` of training, or for ``max_steps`` optimizer steps (``seconds`` None: no time stop, no calibration),
    and return ``out/result.json``'s dict; a folder already holding ``result.json`` is a finished run, returned as
    it is. ``config`` is a whole resolved lit-lm config (written to ``out/run.yaml``). Raises PeerError with the
    log's tail when the run fails."""
    if (seconds is None) == (max_steps is None):
        raise ValueError("run_hf_peer: give one budget, seconds or max_steps.")
    require_peer_packages()
    out = Path(out)
    if (out / "result.json").is_file():
        return json.loads((out / "result.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    budget = ["--seconds", str(seconds)] if max_steps is None else ["--steps", str(max_steps)]
    command = [sys.executable, "-m", "lit_lm.ablate.hf_peer", "--config", str(out / "run.yaml"), *budget,
               "--heldout", str(heldout), "--out", str(out), "--calibration-steps", str(calibration_steps)]
    if eval_every:
        command += ["--eval-every", str(eval_every)]
    root = str(Path(__file__).resolve().parents[2])  # this checkout's lit_lm, even where another one is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    with open(out / "train.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
    if code != 0 or not (out / "result.json").is_file():
        tail = "\n".join((out / "train.log").read_text(errors="replace").splitlines()[-TAIL_LINES:])
        raise PeerError(f"the HuggingFace peer run in {out} failed (exit status {code}); the end of "
                        f"{out / 'train.log'}:\n{tail}")
    return json.loads((out / "result.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_lm.ablate.hf_peer", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="a whole resolved lit-lm config (YAML)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--seconds", type=float, help="the training budget in seconds (max_steps estimated to fit)")
    budget.add_argument("--steps", type=int, help="the training budget in optimizer steps (no time stop)")
    parser.add_argument("--heldout", required=True, type=Path,
                        help="a torch.save'd dict of inputs, labels (-100: not scored) and attention_mask")
    parser.add_argument("--out", required=True, type=Path, help="the run's folder")
    parser.add_argument("--eval-every", type=float, default=None,
                        help="seconds of training (with --steps: optimizer steps) between held-out scores (default: a "
                             "tenth of the budget)")
    parser.add_argument("--calibration-steps", type=int, default=5,
                        help="micro-batches timed (at most; fewer once they add up to a twentieth of the budget) to "
                             "estimate max_steps, outside the budget")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="held-out rows per forward pass")
    args = parser.parse_args(argv)
    try:
        require_peer_packages()
        config = yaml.safe_load(args.config.read_text())  # before the slow imports: a wrong path fails at once
        result = train_peer(config, args.seconds, args.heldout, args.out, args.eval_every, args.calibration_steps,
                            args.eval_batch_size, max_steps=args.steps)
    except (ImportError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
