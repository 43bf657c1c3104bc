"""Trains every variant of an ablation under the same budget (wall-clock minutes or optimizer steps,
``lit_lm.ablate.budget``) and scores each on the same held-out set.

Each run is its own ``train.py fit`` process (``--config <recipe> <variant's words> <the ablation's words>``) in
``OUT/runs/<variant>/seed<k>``, with validation off (the whole budget trains) and ``lit_lm.callbacks.HeldOutLoss``
scoring the ablation's held-out set (``OUT/heldout.pt``) ten times along the way, the budget clock paused meanwhile.
The data store and the held-out set are built once, before the first run and outside every budget, and every variant
must keep the base's data settings: the same corpus, tokenizer, split and data order.

Interrupted (Ctrl-C, a crash, a reboot), the same command resumes: finished runs (``result.json``) are kept, and an
interrupted run continues from its newest checkpoint with what is left of its budget (Lightning's Timer is restored
from the checkpoint; a budget of steps is the same ``max_steps`` again). A run with no checkpoint yet starts again.
"""

import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lit_lm.ablate.budget import Budget
from lit_lm.ablate.plots import plot_curves
from lit_lm.ablate.results import RunResult, markdown_table, summarize
from lit_lm.ablate.spec import Ablation, AblationFileError, Variant
from lit_lm.checkpoint import write_text_atomically
from lit_lm.heldout import HeldOutSet
from lit_lm.runs import find_last_checkpoint

TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"
DATA_KEYS_FREE = ("batch_size", "num_workers")
"""Data settings a variant may change: how rows are batched and loaded, not which rows or tokens."""


@dataclass
class Settings:
    """How every run of an ablation trains and is scored."""

    budget: Budget
    """Every run's budget: ``Budget("minutes", 10)`` or ``Budget("steps", 500)``."""
    out: Path
    words: list[str] = field(default_factory=list)
    """train.py words for every run, after the variant's own (e.g. ``--data.init_args.paths=[corpus/]``)."""
    eval_sequences: int = 512
    points: int = 10
    downstream: list[str] = field(default_factory=list)


def run_id(variant: Variant, seed: int) -> str:
    return f"{variant.name}/seed{seed}"


class Runner:
    """Runs one ablation into ``settings.out``: checks, prepares, trains, scores, tabulates and plots."""

    def __init__(self, ablation: Ablation, settings: Settings) -> None:
        self.ablation, self.settings = ablation, settings
        self.out = settings.out
        self.configs: dict[str, dict] = {}
        self.other_objective: set[str] = set()
        """Variants that train another objective than the reference (with --downstream only): no held-out loss."""

    # ---- before anything trains ----
    def check_out_folder(self) -> dict:
        """``OUT/ablation.json``: what this folder's runs were trained with; another ablation's folder is refused."""
        budget = self.settings.budget
        manifest = {"file": str(self.ablation.path), "minutes": budget.minutes, "budget": budget.to_json(),
                    "words": self.settings.words, "eval_sequences": self.settings.eval_sequences,
                    "points": self.settings.points}
        path = self.out / "ablation.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            saved["budget"] = Budget.from_json(saved).to_json()  # a folder from before budgets had kinds: minutes
            differing = [k for k in manifest if k not in ("file", "minutes") and saved.get(k) != manifest[k]]
            if differing:
                shown = [" ".join(Budget.from_json(saved).option) if k == "budget" else repr(saved.get(k))
                         for k in differing]
                raise AblationFileError(
                    f"{self.out} holds runs of an ablation with other settings ({', '.join(differing)}: "
                    f"{', '.join(shown)}); give another --out to compare settings.")
            manifest["group"] = saved["group"]
        else:
            manifest["group"] = f"{self.ablation.path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
            write_text_atomically(path, json.dumps(manifest, indent=1))
        return manifest

    def resolve(self) -> None:
        """Every lit-lm variant's whole config, parsed as train.py will (a bad word fails here, before any run), and
        checked to keep the reference's data settings and objective."""
        from lit_lm.cli import resolved_config

        reference = self.ablation.reference
        for variant in tqdm([self.ablation.reference, *[v for v in self.ablation.variants if v is not reference]],
                            desc="ablate: checking variants", unit="variant", leave=False):
            if variant.peer:
                continue
            try:
                self.configs[variant.name] = resolved_config(variant.recipe, *variant.words, *self.settings.words)
            except SystemExit as exit_:
                raise AblationFileError(f"variant {variant.name!r}: train.py refused its words "
                                        f"({' '.join(variant.words)}); see the message above.") from exit_
        ref = self.configs.get(reference.name)
        if self.settings.budget.kind != "minutes":
            for name, config in self.configs.items():
                timed = [c["class_path"].rsplit(".", 1)[-1] for c in config["trainer"].get("callbacks") or []
                         if isinstance(c, dict) and (c.get("init_args") or {}).get("key") == "time"]
                if timed:
                    raise AblationFileError(
                        f"variant {name!r}: {', '.join(timed)} follows the wall-clock budget (key: time), which a "
                        f"--steps budget does not have; use --minutes, or key: auto (or steps) for this comparison.")
        if ref is None:
            raise AblationFileError(f"{self.ablation.path}: the reference variant {reference.name!r} must be a lit-lm "
                                    f"run, not a peer.")
        peers = [v.name for v in self.ablation.variants if v.peer]
        if peers and objective(ref) != "masked":
            raise AblationFileError(f"variants {', '.join(peers)}: the hf-trainer peer trains a masked-LM model; the "
                                    f"base {self.ablation.base.name} trains a {objective(ref)} one.")
        for name, config in self.configs.items():
            if objective(config) != objective(ref) or objective(config) == REPLACED_TOKEN:
                if not self.settings.downstream:
                    why = ("has no held-out loss" if objective(config) == objective(ref) else
                           f"the reference a {objective(ref)} one: their held-out losses do not compare")
                    raise AblationFileError(
                        f"variant {name!r} trains a {objective(config)} model, {why}. Compare it downstream instead: "
                        f"add --downstream (e.g. --downstream sst2); the table then reads n/a for its held-out loss.")
                self.other_objective.add(name)
            changed = sorted(k for k in set(config["data"]["init_args"]) | set(ref["data"]["init_args"])
                             if k not in DATA_KEYS_FREE
                             and config["data"]["init_args"].get(k) != ref["data"]["init_args"].get(k))
            if config["data"].get("class_path") != ref["data"].get("class_path") or changed:
                raise AblationFileError(
                    f"variant {name!r} changes the data settings ({', '.join(changed) or 'data.class_path'}): every "
                    f"variant must train on the base's rows and tokenizer, or their held-out losses do not compare.")

    def heldout(self) -> Path:
        """``OUT/heldout.pt``, built once from the reference's data (the store is built or reused first)."""
        path = self.out / "heldout.pt"
        if path.is_file():
            return path
        import lightning as L
        from jsonargparse import ArgumentParser

        ref = self.configs[self.ablation.reference.name]
        parser = ArgumentParser()
        parser.add_subclass_arguments(L.LightningDataModule, "data")
        datamodule = parser.instantiate_classes(parser.parse_object({"data": ref["data"]})).data
        print("ablate: preparing the data and the held-out set (outside every budget) ...", flush=True)
        datamodule.prepare_data()
        kind = "causal" if objective(ref) == "causal" else "masked"
        heldout = HeldOutSet.from_datamodule(datamodule, kind, self.settings.eval_sequences)
        print(f"ablate: held-out set: {len(heldout.inputs)} sequences, {heldout.scored_tokens} scored tokens",
              flush=True)
        return heldout.save(path)

    # ---- training ----
    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.out / "runs" / variant.name / f"seed{seed}"

    def train_words(self, variant: Variant, seed: int, heldout: Path) -> list[str]:
        run_dir = self.run_dir(variant, seed)
        words = [*self.settings.budget.train_words(), f"--trainer.default_root_dir={run_dir}",
                 "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
                 "--trainer.enable_progress_bar=false", f"--seed_everything={seed}"]
        if variant.name not in self.other_objective:  # the held-out set scores the reference's objective only
            words += ["--trainer.callbacks+=lit_lm.callbacks.HeldOutLoss",
                      f"--trainer.callbacks.init_args.path={heldout}",
                      f"--trainer.callbacks.init_args.points={self.settings.points}"]
        logger = self.configs[variant.name]["trainer"].get("logger")
        if isinstance(logger, dict) and (logger.get("init_args") or {}).get("save_dir"):
            words.append(f"--trainer.logger.init_args.save_dir={run_dir}")  # a recipe that names its log folder
        return words

    def train(self, variant: Variant, seed: int, heldout: Path, group: str, bar: tqdm) -> RunResult:
        run_dir = self.run_dir(variant, seed)
        resume = find_last_checkpoint([run_dir]) is not None
        if not resume and run_dir.exists():
            for path in sorted(run_dir.rglob("*"), reverse=True):  # an interrupted start without a checkpoint
                path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
        run_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(TRAIN_PY), "fit", "--config", str(variant.recipe), *variant.words,
                   *self.settings.words, *self.train_words(variant, seed, heldout),
                   *(["--ckpt_path=last"] if resume else [])]
        (run_dir / "command.txt").write_text(" ".join(command[1:]) + "\n")
        env = {**os.environ, "WANDB_RUN_GROUP": group,
               "WANDB_NAME": variant.name if self.ablation.seeds == 1 else f"{variant.name}-seed{seed}"}
        start = time.perf_counter()
        with open(run_dir / "train.log", "a") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            returncode = wait_with_progress(process, bar, self.settings.budget)
        seconds = time.perf_counter() - start
        checkpoint, diverged = find_last_checkpoint([run_dir]), None
        if returncode != 0:
            stopped = sorted(run_dir.rglob("nonfinite-step*.ckpt"))
            if not stopped:
                tail = (run_dir / "train.log").read_text()[-3000:]
                raise RuntimeError(f"ablate: run {run_id(variant, seed)} failed (exit {returncode}); the end of "
                                   f"{run_dir / 'train.log'}:\n{tail}")
            # StopOnNonFiniteLoss ended it: score the last good weights, and say so in the table
            checkpoint, diverged = stopped[-1], int(stopped[-1].stem.removeprefix("nonfinite-step"))
        return self.score_checkpoint(variant, seed, checkpoint, heldout, seconds, diverged)

    def score_checkpoint(self, variant: Variant, seed: int, checkpoint: Path, heldout: Path, seconds: float,
                         diverged: int | None) -> RunResult:
        from lit_lm.checkpoint import Checkpoint

        read = Checkpoint.read(checkpoint)
        model = read.model()
        callbacks = read.contents.get("callbacks", {})
        tokens = next((s["tokens_seen"] for k, s in callbacks.items() if k.startswith("ThroughputMFU")), None)
        train_seconds = next((s["time_elapsed"]["train"] for k, s in callbacks.items()
                              if k.startswith(("Timer", "TrainingClock"))), 0.0)
        scored = variant.name not in self.other_objective
        return RunResult(
            variant=variant.name, seed=seed, change=variant.description,
            heldout_loss=HeldOutSet.load(heldout).score(model) if scored else None,
            parameters=sum(p.numel() for p in model.parameters()), steps=int(read.contents["global_step"]),
            tokens_seen=tokens, train_seconds=round(train_seconds, 1),
            process_seconds=round(seconds, 1), diverged_at_step=diverged, checkpoint=str(checkpoint),
            words=list(variant.words), curve=read_curve(self.run_dir(variant, seed)))

    def train_peer(self, variant: Variant, seed: int, heldout: Path, bar: tqdm) -> RunResult:
        """The peer trained by its own code in its own process, then scored like every lit-lm run: its saved
        model converted with ``from_hf`` and run on the held-out set."""
        from transformers import AutoModelForMaskedLM

        from lit_lm.ablate.hf_peer import run_hf_peer
        from lit_lm.hf import from_hf

        run_dir = self.run_dir(variant, seed)
        start = time.perf_counter()
        config = {**self.configs[self.ablation.reference.name], "seed_everything": seed}
        peer_dir = run_dir / "peer"  # the peer's own files (result.json, curve.csv, model/), beside the runner's
        budget = self.settings.budget
        result = run_hf_peer(config, budget.seconds, heldout, peer_dir,
                             max_steps=budget.value if budget.kind == "steps" else None)
        bar.update(budget.bar_units)
        model = from_hf(AutoModelForMaskedLM.from_pretrained(peer_dir / "model"))
        return RunResult(
            variant=variant.name, seed=seed, change=variant.description,
            heldout_loss=HeldOutSet.load(heldout).score(model), parameters=sum(p.numel() for p in model.parameters()),
            steps=int(result["steps"]), tokens_seen=result.get("tokens_seen"),
            train_seconds=round(float(result["train_seconds"]), 1),
            process_seconds=round(time.perf_counter() - start, 1), checkpoint=str(peer_dir / "model"),
            curve=read_peer_curve(peer_dir / "curve.csv"))

    # ---- the whole ablation ----
    def run(self) -> list[RunResult]:
        self.out.mkdir(parents=True, exist_ok=True)
        manifest = self.check_out_folder()
        self.resolve()
        heldout = self.heldout()
        runs = [(v, s) for s in range(self.ablation.seeds) for v in self.ablation.variants]
        budget = self.settings.budget
        print(f"ablate: {len(runs)} runs of {budget.per_run} each, results in {self.out}, wandb group "
              f"{manifest['group']}", flush=True)
        results = []
        with tqdm(total=len(runs) * budget.bar_units, unit=budget.bar_unit, desc="ablate", dynamic_ncols=True,
                  mininterval=1 if sys.stderr.isatty() else 60,
                  bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} " + budget.bar_unit +
                             " [{elapsed}<{remaining}]") as bar:
            for variant, seed in runs:
                done = self.run_dir(variant, seed) / "result.json"
                if done.is_file() and RunResult.load(done).words == list(variant.words):
                    results.append(RunResult.load(done))
                    bar.update(budget.bar_units)
                    continue
                bar.set_description_str(f"ablate: {run_id(variant, seed)}")
                result = (self.train_peer(variant, seed, heldout, bar) if variant.peer
                          else self.train(variant, seed, heldout, manifest["group"], bar))
                result.save(done)
                results.append(result)
                loss = "n/a (other objective)" if result.heldout_loss is None else f"{result.heldout_loss:.4f}"
                tqdm.write(f"ablate: {run_id(variant, seed)}: held-out loss {loss} after {result.steps} steps, "
                           f"{result.tokens_seen or 0:,} tokens")
                if budget.kind == "steps" and result.steps < budget.value and result.diverged_at_step is None:
                    tqdm.write(f"ablate: {run_id(variant, seed)} ran out of data after {result.steps} of its "
                               f"{budget.value} steps (one epoch, never a repeated row): add text to data.paths or "
                               f"give fewer --steps.")
                self.write(results)
        if self.settings.downstream:
            self.run_downstream(results)
        self.write(results)
        return results

    def run_downstream(self, results: list[RunResult]) -> None:
        from lit_lm.glue.suite import run_suite

        for result in results:
            if result.downstream or result.variant in {v.name for v in self.ablation.variants if v.peer}:
                continue
            suite = run_suite([f"{result.variant}={result.checkpoint}"], self.settings.downstream,
                              self.out / "downstream" / result.variant / f"seed{result.seed}")
            result.downstream = {task: done.score for task, done in suite.done.get(result.variant, {}).items()}
            result.save(self.out / "runs" / result.variant / f"seed{result.seed}" / "result.json")

    def write(self, results: list[RunResult]) -> None:
        """``OUT/results.json``, ``OUT/results.md`` and both plots, from the runs finished so far."""
        order = [v.name for v in self.ablation.variants]
        reference = self.ablation.reference.name
        summaries = summarize(results, order, reference)
        from lit_lm.glue.suite import task_name

        tasks = [name for name in map(task_name, self.settings.downstream)
                 if any(name in r.downstream for r in results)]
        import lightning as L

        machine = (f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"lightning {L.__version__}" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available()
                                                   else ""))
        budget = self.settings.budget
        command = " ".join(["python -m lit_lm.ablate", shown_path(self.ablation.path), *budget.option,
                            "--out", shown_path(self.out),
                            *(["--seeds", str(self.ablation.seeds)] if self.ablation.seeds > 1 else []),
                            *(["--only", ",".join(order)] if self.ablation.only else []),
                            *(["--downstream", ",".join(self.settings.downstream)] if self.settings.downstream else []),
                            *(["--", *self.settings.words] if self.settings.words else [])])
        heldout = HeldOutSet.load(self.out / "heldout.pt")
        checks = self.ablation.description
        md = [f"# Ablation: {self.ablation.path.stem}", "", checks, "",
              f"Every run trained from scratch for {budget.sentence}, on the same rows in the same order, and was "
              f"scored on the same "
              f"{len(heldout.inputs)} held-out sequences ({heldout.scored_tokens:,} scored tokens"
              + (", the same 15% masks for every run" if heldout.objective == "masked" else "")
              + "), whatever it trained with"
              + ("" if not self.other_objective else
                 f" (except {', '.join(sorted(self.other_objective))}: another objective, compared on the downstream "
                 f"columns only)")
              + ". Differences are from "
              f"`{reference}`" + ("; ± is two standard errors of the difference (its noise band)."
                                  if self.ablation.seeds > 1 else "; one seed: rerun with `seeds: 2` or more for a "
                                                                  "noise band."),
              "", markdown_table(summaries, reference, self.ablation.seeds, tasks), "",
              "![held-out loss against training time](loss_vs_time.png)", "",
              "![held-out loss against tokens](loss_vs_tokens.png)", "",
              f"Command: `{command}`", "", f"Machine: {machine}.", ""]
        write_text_atomically(self.out / "results.md", "\n".join(md))
        write_text_atomically(self.out / "results.json", json.dumps({
            "ablation": str(self.ablation.path), "minutes": budget.minutes, "budget": budget.to_json(),
            "seeds": self.ablation.seeds,
            "reference": reference, "command": command, "machine": machine,
            "heldout": {"sequences": len(heldout.inputs), "scored_tokens": heldout.scored_tokens,
                        "objective": heldout.objective, "data_card": heldout.card},
            "variants": [{"variant": s.variant, "change": s.change, "heldout_loss": s.loss, "spread": s.spread,
                          "delta": s.delta, "band": s.band, "parameters": s.runs[0].parameters,
                          "steps": s.mean("steps"), "tokens_seen": s.mean("tokens_seen"),
                          "tokens_per_sec": s.mean("tokens_per_sec")} for s in summaries],
            "runs": [{**asdict(r), "tokens_per_sec": r.tokens_per_sec} for r in results],
        }, indent=1))
        plot_curves(results, order, self.out, f"{self.ablation.path.stem}: {budget.per_run} per run")


def shown_path(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it (as a user would type it), else as it is."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


REPLACED_TOKEN = "replaced-token detection"


def objective(config: dict) -> str:
    """What a run's model learns: "causal", "masked" or "replaced-token detection" (which no held-out set scores)."""
    class_path = config["model"]["class_path"]
    if class_path.endswith("CausalLMModule"):
        return "causal"
    return REPLACED_TOKEN if class_path.endswith("ReplacedTokenDetectionModule") else "masked"


def wait_with_progress(process: subprocess.Popen, bar: tqdm, budget: Budget) -> int:
    """Waits for ``process``, moving ``bar`` by the seconds it runs (at most its budget's) or, for a budget of steps,
    by its steps when it ends; Ctrl-C reaches the process too (same process group), which checkpoints and stops; then
    the runner stops, saying how to resume."""
    start, shown, units = time.monotonic(), 0, budget.bar_units
    try:
        while process.poll() is None:
            time.sleep(0.5)
            now = min(int(time.monotonic() - start), units - 1) if budget.kind == "minutes" else 0
            if now > shown:
                bar.update(now - shown)
                shown = now
    except KeyboardInterrupt:
        process.wait()
        raise
    bar.update(units - shown)
    return process.returncode


def read_curve(run_dir: Path) -> list[dict]:
    """The held-out scores HeldOutLoss logged, from every metrics.csv of the run (a resumed run adds a version)."""
    points = []
    for path in sorted(run_dir.rglob("metrics.csv"), key=lambda p: (len(p.parts), str(p))):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("heldout/loss"):
                    points.append({"train_seconds": to_float(row.get("heldout/train_seconds")),
                                   "tokens_seen": to_float(row.get("heldout/tokens_seen")),
                                   "heldout_loss": float(row["heldout/loss"]), "step": int(float(row["step"]))})
    return sorted(points, key=lambda p: (p["step"], p["train_seconds"] or 0))


def read_peer_curve(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path) as f:
        return [{"train_seconds": to_float(r.get("train_seconds")), "tokens_seen": to_float(r.get("tokens_seen")),
                 "heldout_loss": float(r["heldout_loss"]), "step": int(float(r.get("step") or 0))}
                for r in csv.DictReader(f) if r.get("heldout_loss")]


def to_float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None
