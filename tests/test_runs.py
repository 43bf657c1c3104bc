"""Run folders as a user meets them: a recipe run twice in one folder, the second time with a switch changed, trains
from scratch in a folder of its own; ``--ckpt_path last`` resumes only a run with the same model and data; the
config a run saves reproduces it alone."""

import csv
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_lm.runs import differences, find_last_checkpoint
from tests.conftest import ROOT, user_runs

TINY = ["--model.init_args.config.hidden_size", "32", "--model.init_args.config.num_layers", "1",
        "--model.init_args.config.num_heads", "2", "--model.init_args.config.intermediate_size", "64",
        "--data.init_args.tokenizer.vocab_size", "300", "--data.init_args.seq_length", "32",
        "--data.init_args.batch_size", "8", "--data.init_args.split", "paragraph",
        "--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "1",
        "--trainer.val_check_interval", "3", "--trainer.enable_progress_bar", "false"]
LOGS = Path("runs/quickstart/logs")
# what a first run must not print: Lightning's litlogger tip, its implicit-resume warnings, a pytree deprecation
# inside Lightning, the model summary's precision note
NOISE = ("litlogger", "ckpt_path", "LeafSpec", "not supported by the model summary", "Traceback")


STEPS_SCHEDULE = "--trainer.callbacks.OneCycleLR.key=steps"


def train(cwd: Path, corpus: Path, *extra: str) -> subprocess.CompletedProcess:
    # the schedule keyed to steps, not to the clock (`auto` takes the larger of both): on a loaded machine the first
    # steps' share of the time budget, and so their learning rate, would differ from run to run
    cmd = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
           *TINY, "--data.init_args.paths", f"[{corpus}]", STEPS_SCHEDULE, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


def train_here(cwd: Path, corpus: Path, capsys, *extra: str) -> tuple[int, str]:
    """The same run as ``train``, in this process: its exit status and stderr."""
    code, _, err = user_runs(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY,
                              "--data.init_args.paths", f"[{corpus}]", STEPS_SCHEDULE, *extra], cwd, capsys)
    return code, err


def losses(cwd: Path, version: int) -> list[float]:
    with open(cwd / LOGS / f"version_{version}" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def checkpoint(cwd: Path, version: int) -> dict:
    return torch.load(cwd / LOGS / f"version_{version}" / "checkpoints" / "last.ckpt", weights_only=False)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_recipe_run_twice_in_one_folder_trains_fresh_each_time(corpus, tmp_path, capsys):
    first = train(tmp_path, corpus, "--trainer.precision", "bf16-mixed")  # bf16 shows the model summary's note
    assert first.returncode == 0, first.stderr[-3000:]
    assert not [noise for noise in NOISE if noise in first.stdout + first.stderr]  # what a terminal shows
    first_checkpoint = tmp_path / LOGS / "version_0" / "checkpoints" / "last.ckpt"
    first_bytes = digest(first_checkpoint)

    code, err = train_here(tmp_path, corpus, capsys, "--trainer.precision", "bf16-mixed")  # the same, same folder
    assert code == 0, err[-3000:]
    # the same seed from scratch: the same losses (to bf16 round-off; a resumed run would go on from the first's)
    assert losses(tmp_path, 1) == pytest.approx(losses(tmp_path, 0), rel=1e-4)
    assert checkpoint(tmp_path, 1)["global_step"] == 3

    code, err = train_here(tmp_path, corpus, capsys, "--trainer.precision", "bf16-mixed",
                           "--model.init_args.config.num_layers", "2")
    assert code == 0, err[-3000:]
    assert checkpoint(tmp_path, 2)["global_step"] == 3  # from scratch, not 3 more steps on the first run
    assert checkpoint(tmp_path, 2)["hyper_parameters"]["config"]["num_layers"] == 2
    assert digest(first_checkpoint) == first_bytes  # nobody wrote into the first run's folder


@pytest.mark.slow
def test_resuming_with_another_model_or_data_names_the_settings(corpus, tmp_path, capsys, caplog):
    assert train_here(tmp_path, corpus, capsys, "--trainer.max_steps", "2")[0] == 0
    code, err = train_here(tmp_path, corpus, capsys, "--ckpt_path", "last", "--model.init_args.config.num_layers", "2",
                           "--data.init_args.seed", "7")
    assert code == 2
    assert "model.init_args.config.num_layers: 1 in the checkpoint, 2 now" in err
    assert "data.init_args.seed: 0 in the checkpoint, 7 now" in err
    assert "Traceback" not in err  # one clear message
    assert not (tmp_path / LOGS / "version_1" / "checkpoints").exists()  # and nothing written

    with caplog.at_level(logging.INFO):  # Lightning's info lines go through logging
        code, err = train_here(tmp_path, corpus, capsys, "--ckpt_path", "last", "--trainer.max_steps", "3",
                               "--model.init_args.optimizer.lr", "1e-3")  # the optimizer may change on a resume
    assert code == 0, err[-3000:]
    assert "resuming from runs/quickstart/logs/version_0/checkpoints/last.ckpt" in caplog.text


def yaml_leaves(tree, prefix: tuple = ()):
    """(path, value) for every value of a YAML tree that is not a mapping."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from yaml_leaves(value, (*prefix, key))
    else:
        yield prefix, tree


def at(tree, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def command_line(words: list[str]) -> dict[tuple, object]:
    """``--a.b value`` and ``--a.b=value`` as {("a", "b"): value}, each value read as YAML; the last one wins."""
    settings, i = {}, 0
    while i < len(words):
        key, _, value = words[i].removeprefix("--").partition("=")
        if not _:
            value, i = words[i + 1], i + 1
        settings[tuple(key.split("."))] = yaml.safe_load(value)
        i += 1
    return settings


@pytest.mark.slow
def test_the_saved_config_reproduces_the_run_alone(corpus, tmp_path, capsys):
    """config.yaml holds the whole resolved config, the recipe's bases merged in and no `base:` left: every setting
    of the recipe's and its base's YAML files (read here, not through the CLI), the recipe's over the base's and the
    command line's over both, the base's callbacks followed by the recipe's. Run alone, from a folder with no recipe
    or base file beside it, it trains the very same run."""
    overrides = ["--trainer.precision", "32-true", "--trainer.max_steps", "1"]
    assert train_here(tmp_path, corpus, capsys, *overrides)[0] == 0
    alone = tmp_path / "elsewhere" / "config.yaml"
    alone.parent.mkdir()
    shutil.copy(tmp_path / LOGS / "version_0" / "config.yaml", alone)
    saved = yaml.safe_load(alone.read_text())
    assert "base" not in saved

    recipe = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    base = yaml.safe_load((ROOT / "configs" / "base" / "trainer.yaml").read_text())
    assert recipe.pop("base") == "base/trainer.yaml"
    callbacks = base["trainer"].pop("callbacks") + recipe["trainer"].pop("callbacks+")
    loggers = base["trainer"].pop("logger")
    expected = dict(yaml_leaves(base)) | dict(yaml_leaves(recipe))
    for path, value in command_line([*TINY, "--data.init_args.paths", f"[{corpus}]", STEPS_SCHEDULE,
                                     *overrides]).items():
        if path[:2] == ("trainer", "callbacks"):  # --trainer.callbacks.NAME.key=value: that callback's init_args
            callback = next(c for c in callbacks if c["class_path"].endswith(f".{path[2]}"))
            callback["init_args"][path[3]] = value
        else:
            expected[path] = value
    assert expected[("trainer", "max_steps")] == 1 and expected[("model", "init_args", "config", "hidden_size")] == 32
    for path, value in expected.items():
        assert at(saved, path) == value, path
    for listed, written in ((callbacks, saved["trainer"]["callbacks"]), (loggers, saved["trainer"]["logger"])):
        assert [c["class_path"] for c in written] == [c["class_path"] for c in listed]
        for given, entry in zip(listed, written):
            assert entry["init_args"] | given.get("init_args", {}) == entry["init_args"], given["class_path"]
    assert [c["init_args"].get("key") for c in saved["trainer"]["callbacks"]][1] == "steps"  # OneCycleLR's

    # the saved config alone trains the same run: the same program on the same data from the same seed, on this
    # machine, in float32: bitwise the same (CPU kernels are deterministic at a given thread count)
    code, _, err = user_runs(["fit", "--config", "config.yaml"], alone.parent, capsys)
    assert code == 0, err[-3000:]
    first, second = checkpoint(tmp_path, 0), checkpoint(alone.parent, 0)
    assert second["global_step"] == first["global_step"] == 1
    assert list(second["state_dict"]) == list(first["state_dict"])
    assert all(torch.equal(second["state_dict"][k], v) for k, v in first["state_dict"].items())
    assert losses(alone.parent, 0) == losses(tmp_path, 0)


@pytest.mark.slow
def test_resuming_last_with_no_run_is_a_clear_error(corpus, tmp_path, capsys):
    code, err = train_here(tmp_path, corpus, capsys, "--ckpt_path", "last")
    assert code == 2
    assert "no last*.ckpt under runs/quickstart" in err and "Traceback" not in err


def test_differences_name_each_setting_and_skip_the_ignored_ones():
    saved = {"config": {"num_layers": 4, "hidden_size": 256}, "optimizer": {"lr": 1e-3}, "betas": (0.9, 0.98)}
    now = {"config": {"num_layers": 2, "hidden_size": 256}, "optimizer": {"lr": 5e-4}, "betas": [0.9, 0.98]}
    assert differences(saved, now, "model", ignore=("optimizer",)) == [
        "model.config.num_layers: 4 in the checkpoint, 2 now"]


def test_the_newest_last_checkpoint_is_found_across_version_folders(tmp_path):
    for version, name in ((0, "last.ckpt"), (1, "last.ckpt"), (2, "epoch=0-step=4.ckpt")):
        folder = tmp_path / "logs" / f"version_{version}" / "checkpoints"
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b"")
        os.utime(folder / name, (1000 + version, 1000 + version))  # written one after the other
    assert find_last_checkpoint([tmp_path]) == tmp_path / "logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert find_last_checkpoint([tmp_path / "missing"]) is None
