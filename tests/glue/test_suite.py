"""The fine-tuning suite end to end on generated tasks: `train.py fit` with a task recipe, `python -m lit_lm.glue`,
its results files, resuming, and the scratch column."""

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import lit_lm.cli
import lit_lm.glue.suite as suite
import lit_lm.modules
from lit_lm.data.classification import ClassificationDataModule
from lit_lm.data.tokenizer import TokenizerConfig, train_tokenizer
from lit_lm.glue import SuiteError, run_suite
from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM
from lit_lm.runs import find_last_checkpoint
from tests.conftest import ROOT, InterruptAt, run_module, sentence, user_runs
from tests.models.helpers import tiny
from tests.models.test_decoder import GPT2
from tests.test_checkpoint import save_run_checkpoint

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.precision", "32-true"]
SMALL = [*QUIET, "--trainer.max_epochs", "2", "--data.init_args.batch_size", "8"]
pytestmark = pytest.mark.slow  # every test here fine-tunes through train.py or lit_lm.cli.main


def write_task(folder: Path, name: str, pair: bool = False, rows: int = 96) -> Path:
    """A learnable task as GLUE-style TSV files, and its recipe built on configs/base/finetune.yaml: the label says
    whether the (first) sentence is 'bright' rather than 'dark'. Train rows alternate; one dev row in four is bright,
    so a score computed on the wrong rows differs even for a model that always guesses the same label."""
    rng = random.Random(name)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", rows), ("dev", rows // 3)):
        lines = ["first\tsecond\tlabel" if pair else "sentence\tlabel"]
        for i in range(n):
            label = i % 2 if split == "train" else int(i % 4 == 0)  # dev: a constant guess scores 25% or 75%
            text = sentence(rng).replace("the ", f"the {'bright' if label else 'dark'} ", 1)
            lines.append(f"{text}\t{sentence(rng)}\t{label}" if pair else f"{text}\t{label}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    columns = "[first, second]" if pair else "[sentence]"
    recipe = folder / f"{name}.yaml"
    recipe.write_text(f"""base: {ROOT / 'configs' / 'base' / 'finetune.yaml'}
trainer:
  default_root_dir: {folder / 'runs'}
model:
  class_path: lit_lm.modules.SequenceClassificationModule
  init_args:
    optimizer: {{lr: 1.0e-3}}
data:
  class_path: lit_lm.data.ClassificationDataModule
  init_args:
    train_file: {folder / 'train.tsv'}
    val_file: {folder / 'dev.tsv'}
    text_columns: {columns}
    label_column: label
    metric: {'f1_accuracy' if pair else 'accuracy'}
""")
    return recipe


@torch.no_grad()
def dev_scores(run_dir: str | Path, recipe: str | Path) -> dict[str, float]:
    """A fine-tune's accuracy and F1 (of class 1) on its task's dev file, recomputed here from what the run saved:
    the final weights (its last.ckpt) at the precision its config.yaml records, the prediction of each dev row by
    the argmax of its logits, the labels read from dev.tsv itself, counted by hand."""
    last = find_last_checkpoint([Path(run_dir)])
    precision = yaml.safe_load((last.parents[1] / "config.yaml").read_text())["trainer"]["precision"]
    module = lit_lm.modules.SequenceClassificationModule.load_from_checkpoint(last, map_location="cpu").eval()
    folder = Path(recipe).parent
    header, *rows = [line.split("\t") for line in (folder / "dev.tsv").read_text().splitlines()]
    labels = torch.tensor([int(row[-1]) for row in rows])
    data = ClassificationDataModule(str(folder / "train.tsv"), str(folder / "dev.tsv"),
                                    text_columns=list(range(len(header) - 1)), label_column=len(header) - 1)
    data.attach(module.tokenizer, bool(module.causal), getattr(module.config, "max_sequence_length", None))
    predictions = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=str(precision).startswith("bf16")):
        for batch in data.val_dataloader():
            logits = module(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")).logits
            predictions.append(logits.argmax(-1))
    predicted = torch.cat(predictions)
    assert len(predicted) == len(labels) == len(rows)  # every dev row scored once
    true_positive = int(((predicted == 1) & (labels == 1)).sum())
    wrong = int((predicted != labels).sum())
    return {"accuracy": (predicted == labels).float().mean().item(),
            "f1": 2 * true_positive / (2 * true_positive + wrong) if true_positive or wrong else 0.0}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A lit-lm masked-LM run's checkpoint, with its tokenizer, as a run folder."""
    rng = random.Random(0)
    tokenizer = train_tokenizer([" ".join(sentence(rng) for _ in range(4)) for _ in range(200)],
                                TokenizerConfig(kind="wordpiece", vocab_size=200))
    torch.manual_seed(0)
    model = EncoderForMaskedLM(tiny(vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=64))
    run = tmp_path_factory.mktemp("pretrained") / "tiny-bert"
    save_run_checkpoint(run / "logs" / "version_0" / "checkpoints" / "last.ckpt", model, tokenizer)
    return run


def test_train_py_fine_tunes_a_task_recipe_and_a_second_run_gets_its_own_folder(tmp_path, checkpoint):
    recipe = write_task(tmp_path / "task", "bright")
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(recipe),
               "--model.init_args.init_from", str(checkpoint), *QUIET, "--trainer.max_epochs", "8",
               "--data.init_args.batch_size", "8"]
    for _ in range(2):
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    versions = sorted((tmp_path / "task" / "runs" / "logs").glob("version_*"))
    assert [v.name for v in versions] == ["version_0", "version_1"]
    for version in versions:
        metrics = (version / "metrics.csv").read_text()
        assert "val/accuracy" in metrics and "val/score" in metrics and "train/loss" in metrics
        final = [row for row in csv.DictReader(metrics.splitlines()) if row.get("val/accuracy")][-1]
        assert float(final["val/accuracy"]) > 0.8  # the task is learnt: the head, labels and pooling work
        assert "SequenceClassificationModule" in (version / "config.yaml").read_text()
        saved = torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)["hyper_parameters"]
        assert saved["num_labels"] == 2 and saved["metric"] == "accuracy"  # linked from the data


def test_the_suite_writes_a_table_resumes_and_refuses_other_settings(tmp_path, checkpoint, monkeypatch):
    tasks = [str(write_task(tmp_path / "single", "bright")), str(write_task(tmp_path / "pair", "pairs", pair=True))]
    out = tmp_path / "out"
    run_suite([f"tiny={checkpoint}"], tasks, out, SMALL, scratch=True)
    table = (out / "results.md").read_text()
    assert "| task | metric | tiny | tiny (random init) |" in table
    assert "| bright | accuracy |" in table and "| pairs | F1/accuracy |" in table and "| **average** |" in table
    saved = json.loads((out / "results.json").read_text())["results"]
    assert {(r["column"], r["task"]) for r in saved} == {(c, t) for c in ("tiny", "tiny (random init)")
                                                         for t in ("bright", "pairs")}
    for r in saved:
        assert set(r["metrics"]) == ({"accuracy"} if r["task"] == "bright" else {"f1", "accuracy"})
        recomputed = dev_scores(r["run_dir"], next(t for t in tasks if Path(t).stem == r["task"]))
        assert r["metrics"] == pytest.approx({k: recomputed[k] for k in r["metrics"]}, abs=1e-6)
        assert r["score"] == pytest.approx(sum(r["metrics"].values()) / len(r["metrics"]))
        assert r["steps"] == 2 * 12  # 2 epochs of 96 rows in batches of 8

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished task was fine-tuned again")

    monkeypatch.setattr(suite, "fine_tune", must_not_run)
    again = run_suite([f"tiny={checkpoint}"], tasks, out, SMALL, scratch=True)
    assert again.markdown() == table
    with pytest.raises(SuiteError, match="other settings"):
        run_suite([f"tiny={checkpoint}"], tasks, out, [*SMALL, "--seed_everything", "1"])


def test_an_interrupted_suite_runs_only_what_is_missing(tmp_path, checkpoint, monkeypatch):
    tasks = [str(write_task(tmp_path / "a", "first")), str(write_task(tmp_path / "b", "second"))]
    real, ran = suite.fine_tune, []

    def interrupted_on_second(column, task, out, overrides):
        if Path(task).stem == "second":
            raise KeyboardInterrupt
        ran.append(Path(task).stem)
        return real(column, task, out, overrides)

    monkeypatch.setattr(suite, "fine_tune", interrupted_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_suite([str(checkpoint)], tasks, tmp_path / "out", SMALL)
    assert [r["task"] for r in json.loads((tmp_path / "out" / "results.json").read_text())["results"]] == ["first"]
    monkeypatch.setattr(suite, "fine_tune", lambda column, task, out, overrides: (
        ran.append(Path(task).stem), real(column, task, out, overrides))[1])
    results = run_suite([str(checkpoint)], tasks, tmp_path / "out", SMALL)
    assert ran == ["first", "second"] and set(results.done["tiny-bert"]) == {"first", "second"}


def test_python_m_lit_lm_glue_runs_the_suite_and_prints_the_table(tmp_path, checkpoint, capsys):
    task = write_task(tmp_path / "task", "bright")
    command = [sys.executable, "-m", "lit_lm.glue", "--checkpoint", str(checkpoint), "--tasks", str(task),
               "--out", str(tmp_path / "out"), "--", *SMALL]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| bright | accuracy |" in done.stdout and (tmp_path / "out" / "results.json").is_file()
    capsys.readouterr()
    assert run_module("lit_lm.glue", "--checkpoint", str(checkpoint), "--tasks", "nope", "--out",
                      str(tmp_path / "out2")) == 2  # refused before anything runs: no new interpreter needed
    err = capsys.readouterr().err
    assert "no recipe for 'nope'" in err and "sst2" in err and "Traceback" not in err


def test_a_bad_init_from_or_column_is_one_line_and_exit_status_2(tmp_path, checkpoint, capsys):
    recipe = write_task(tmp_path / "task", "bright")
    cases = {"model.init_args.init_from: ": ["--model.init_args.init_from", str(tmp_path / "nothing")],
             "data.label_column": ["--model.init_args.init_from", str(checkpoint), "--data.label_column", "gold"]}
    for message, args in cases.items():  # train.py's own run(), in this process: both are refused before training
        code, _, err = user_runs(["fit", "--config", str(recipe), *QUIET, *args], tmp_path, capsys)
        assert code == 2 and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("error: ") and message in err


def test_a_task_interrupted_mid_training_continues_from_its_last_checkpoint(tmp_path, checkpoint, monkeypatch):
    task = str(write_task(tmp_path / "task", "bright"))
    real_main = lit_lm.cli.main

    def pressed_ctrl_c_at_step_5(args):
        cli = lit_lm.cli.LitLMCLI(args=args[1:], run=False)  # args[0] is the subcommand, fit
        cli.trainer.callbacks.append(InterruptAt(step=5))
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    monkeypatch.setattr(lit_lm.cli, "main", pressed_ctrl_c_at_step_5)
    every_step = [*SMALL, "--trainer.log_every_n_steps", "1"]
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C, with a checkpoint
        run_suite([str(checkpoint)], [task], tmp_path / "out", every_step)
    assert not (tmp_path / "out" / "results.json").exists()
    monkeypatch.setattr(lit_lm.cli, "main", real_main)
    results = run_suite([str(checkpoint)], [task], tmp_path / "out", every_step)
    assert results.get("tiny-bert", "bright").steps == 24
    logs = tmp_path / "out" / "runs" / "tiny-bert" / "bright" / "logs"
    resumed = [int(row["step"]) for row in csv.DictReader((logs / "version_1" / "metrics.csv").open())
               if row.get("train/loss")]
    assert len(set(resumed)) == 24 - 5 and min(resumed) > 5  # the resumed run trained only the steps left


def test_an_encoder_and_a_decoder_side_by_side_one_column_each(tmp_path, checkpoint, gpt_tokenizer):
    torch.manual_seed(0)
    decoder = DecoderForCausalLM(tiny(**GPT2, vocab_size=gpt_tokenizer.get_vocab_size(), max_position_embeddings=64))
    gpt = save_run_checkpoint(tmp_path / "tiny-gpt" / "logs" / "version_0" / "checkpoints" / "last.ckpt", decoder,
                              gpt_tokenizer)
    task = str(write_task(tmp_path / "task", "bright"))
    one_epoch = [*QUIET, "--trainer.max_epochs", "1"]
    results = run_suite([f"bert={checkpoint}", f"gpt={gpt}"], [task], tmp_path / "out", one_epoch)
    assert results.columns == ["bert", "gpt"]
    assert "| task | metric | bert | gpt |" in (tmp_path / "out" / "results.md").read_text()
    fine_tuned = lit_lm.modules.SequenceClassificationModule.load_from_checkpoint(
        next((tmp_path / "out" / "runs" / "gpt" / "bright").rglob("last.ckpt")))
    assert fine_tuned.causal and fine_tuned.model.pooling == "last"  # a decoder pools its last real token


def test_the_suite_scores_a_run_whose_wandb_run_has_ended(tmp_path, checkpoint, wandb_offline):
    """Each fine-tune's main() finishes its (offline) wandb run; scoring afterwards must not log into it."""
    task = write_task(tmp_path / "task", "bright", rows=24)
    results = run_suite([str(checkpoint)], [str(task)], tmp_path / "out", [*QUIET, "--trainer.max_epochs", "1"])
    done = results.get("tiny-bert", "bright")
    assert done.score == pytest.approx(dev_scores(done.run_dir, task)["accuracy"], abs=1e-6)
