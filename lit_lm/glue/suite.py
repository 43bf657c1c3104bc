"""Fine-tune one or more pretrained checkpoints on a list of tasks with one shared protocol, and tabulate the scores.

Each (checkpoint, task) pair is one ``train.py fit --config configs/finetune/<task>.yaml`` run with
``--model.init_args.init_from <checkpoint>``, in its own run folder under the suite's output folder; the final
weights are then scored once on the task's validation file. A finished pair is recorded in ``results.json`` at once,
so an interrupted suite resumes where it stopped: finished pairs are not run again, an interrupted one continues
from its ``last.ckpt``.
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from lit_lm.glue.results import Results, TaskResult

ROOT = Path(__file__).resolve().parents[2]
TASK_RECIPES = ROOT / "configs" / "finetune"


class SuiteError(ValueError):
    """A task, checkpoint or output folder the suite cannot use; the message says which and what to do."""


@dataclass(frozen=True)
class Column:
    """A table column: a checkpoint fine-tuned from its pretrained weights, or from random ones (its scratch
    baseline: the same architecture and tokenizer)."""

    name: str
    checkpoint: str
    pretrained_weights: bool = True


def task_recipe(task: str) -> Path:
    """``configs/finetune/<task>.yaml`` for a task's name, or the recipe file a path names."""
    path = Path(task)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise SuiteError(f"--tasks: {task} is not a file.")
        return path
    recipe = TASK_RECIPES / f"{task}.yaml"
    if not recipe.is_file():
        known = sorted(p.stem for p in TASK_RECIPES.glob("*.yaml"))
        raise SuiteError(f"--tasks: no recipe for {task!r} (known: {', '.join(known)}); give a task recipe file "
                         f"instead, e.g. a copy of configs/finetune/sst2.yaml pointing at your files.")
    return recipe


def task_name(task: str) -> str:
    return Path(task).stem if Path(task).suffix in (".yaml", ".yml") else task


def column_name(checkpoint: str) -> str:
    """A short name for a checkpoint: the run's folder name (``runs/crammed-bert/logs/.../last.ckpt`` ->
    ``crammed-bert``), or the folder's or file's own name."""
    path = Path(checkpoint)
    if "logs" in path.parts:
        return path.parts[path.parts.index("logs") - 1] if path.parts.index("logs") > 0 else path.stem
    return path.name if path.is_dir() else path.stem


def columns_for(checkpoints: list[str], scratch: bool) -> list[Column]:
    """One column per ``checkpoint`` (``NAME=PATH`` names it), each followed by its random-init twin with
    ``scratch``."""
    columns = []
    for given in checkpoints:
        name, _, path = given.rpartition("=") if "=" in given else ("", "", given)
        name = name or column_name(path)
        if not Path(path).exists():
            raise SuiteError(f"--checkpoint: {path} does not exist; pass a lit-lm run folder or .ckpt, a folder "
                             f"exported by `python -m lit_lm.hf export`, or a local BERT/RoBERTa/DeBERTa-v2 folder.")
        columns.append(Column(name, path))
        if scratch:
            columns.append(Column(f"{name} (random init)", path, pretrained_weights=False))
    if len({c.name for c in columns}) < len(columns):
        raise SuiteError("--checkpoint: two checkpoints have the same name; name them as NAME=PATH.")
    return columns


def fine_tune(column: Column, task: str, out: Path, overrides: list[str]) -> TaskResult:
    """One fine-tune through the same CLI as ``train.py``, resumed from its ``last.ckpt`` if an earlier suite was
    interrupted during it, then scored on the validation file."""
    from lit_lm.cli import main
    from lit_lm.runs import find_last_checkpoint

    run_dir = out / "runs" / column.name.replace(" ", "_").replace("(", "").replace(")", "") / task_name(task)
    args = ["fit", "--config", str(task_recipe(task)),
            "--model.init_args.init_from", column.checkpoint,
            "--model.init_args.pretrained_weights", str(column.pretrained_weights).lower(),
            "--trainer.default_root_dir", str(run_dir),
            *overrides]
    if find_last_checkpoint([run_dir]) is not None:
        args += ["--ckpt_path", "last"]
    start = time.perf_counter()
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the CLI reads these words only, not the suite's own
        cli = main(args)
    cli.trainer.loggers = []  # the run has ended (main() finished its wandb run, which refuses more logging)
    scores = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    metrics = {key.removeprefix("val/"): float(value) for key, value in scores.items()
               if key.startswith("val/") and key not in ("val/loss", "val/score")}
    return TaskResult(column=column.name, task=task_name(task), metrics=metrics, score=float(scores["val/score"]),
                      settings=settings(column, task, overrides), steps=int(cli.trainer.global_step),
                      seconds=round(time.perf_counter() - start, 1), run_dir=str(run_dir))


def settings(column: Column, task: str, overrides: list[str]) -> dict:
    return {"checkpoint": column.checkpoint, "pretrained_weights": column.pretrained_weights,
            "recipe": str(task_recipe(task)), "overrides": list(overrides)}


def run_suite(checkpoints: list[str], tasks: list[str], out: str | Path, overrides: list[str] = (),
              scratch: bool = False) -> Results:
    """Fine-tune every checkpoint (and, with ``scratch``, its random-init twin) on every task; returns the results,
    also written to ``out/results.json`` and ``out/results.md`` after each task."""
    out = Path(out)
    columns = columns_for(checkpoints, scratch)
    for task in tasks:
        task_recipe(task)  # an unknown task fails before anything trains
    results = Results.load(out)
    results.columns = [c.name for c in columns]
    results.protocol = protocol_line(overrides)
    for column in columns:
        for task in tasks:
            done = results.get(column.name, task_name(task))
            if done is not None:
                if done.settings != settings(column, task, overrides):
                    raise SuiteError(f"{out}/results.json already holds {column.name} on {task_name(task)} with other "
                                     f"settings ({done.settings}); use another --out folder to compare settings.")
                print(f"glue: {column.name} / {task_name(task)}: done before, {100 * done.score:.1f}", flush=True)
                continue
            print(f"glue: fine-tuning {column.name} on {task_name(task)}", flush=True)
            result = fine_tune(column, task, out, list(overrides))
            results.add(result)
            print(f"glue: {column.name} / {result.task}: {100 * result.score:.1f} ({result.steps} steps, "
                  f"{result.seconds:.0f} s)", flush=True)
    results.save()
    return results


def protocol_line(overrides: list[str]) -> str:
    line = ("Protocol: configs/base/finetune.yaml for every task (cramming's GLUE-sane: batch 16, peak lr 4e-5 after "
            "a 10% warmup, then linear decay, 5 epochs, at most 128 tokens), scored on the final weights")
    return line + (f"; overrides: `{' '.join(overrides)}`." if overrides else ".")
