"""A real ``train.py`` run killed with SIGKILL anywhere loses nothing: killed mid-step, during validation and while a
checkpoint is written, then resumed with ``--ckpt_path last``, it trains every row of the epoch exactly once, its
schedules, token count and budget clock go on where they were, and its final weights are an uninterrupted run's;
killed while its store is prepared (deduplication, tokenizer training, shard writing), the store is rebuilt, never
read half-built. The kills are tests/kill_points.py's; one uninterrupted run is the reference for all."""

import csv
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from lit_lm.checkpoint import Checkpoint
from lit_lm.data.__main__ import prepare
from lit_lm.runs import find_last_checkpoint
from tests.conftest import ROOT, write_corpus

# The decoder quickstart at tiny shapes, deterministic in float32: no random masks, no dropout, so a resumed run can
# reproduce an uninterrupted one exactly. A batch ramp (1 -> 2 micro-batches per step) and the LR schedule keyed to
# steps; a checkpoint every 2 optimizer steps, a validation every 4 micro-batches.
DATA = ["--data.init_args.tokenizer.vocab_size", "300", "--data.init_args.seq_length", "32",
        "--data.init_args.batch_size", "8", "--data.init_args.progress", "false",
        "--data.init_args.split", "paragraph", "--data.init_args.num_proc", "1"]
WORDS = ["fit", "--config", str(ROOT / "configs" / "quickstart-decoder.yaml"), *DATA,
         "--model.init_args.config.hidden_size", "32", "--model.init_args.config.num_layers", "1",
         "--model.init_args.config.num_heads", "2", "--model.init_args.config.intermediate_size", "64",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.precision", "32-true", "--trainer.deterministic", "true",
         "--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "4", "--trainer.log_every_n_steps", "1",
         "--trainer.logger=lit_lm.loggers.CSVLogger", "--trainer.logger.init_args.name=logs",
         "--trainer.callbacks.ModelCheckpoint.every_n_train_steps=2", "--trainer.callbacks.OneCycleLR.key=steps",
         "--trainer.callbacks.TextSamples.every_n_steps=1000",
         "--trainer.callbacks+=lit_lm.callbacks.BatchSizeRamp", "--trainer.callbacks.init_args.target_batch_size=16",
         "--trainer.callbacks.init_args.key=steps", "--trainer.callbacks.init_args.ramp_fraction=0.5"]
RUN = Path("runs/quickstart-decoder/logs")
# Final weights: float32 on the CPU, deterministic kernels, the same steps in the same order: equal to float noise.
# 1e-6 is far below one optimizer step's change (lr ~1e-3), so a lost, repeated or reordered step fails.
WEIGHTS_ATOL = 1e-6


def train(cwd: Path, cache: Path, point: str = "none", n: int = 0, *extra: str) -> subprocess.CompletedProcess:
    """train.py through the kill harness, recording its rows into cwd/rows-<k>.txt (one file per process)."""
    rows = cwd / f"rows-{len(list(cwd.glob('rows-*.txt')))}.txt"
    rows.touch()
    env = {**os.environ, "LIT_LM_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "tests" / "kill_points.py"), point, str(n), str(rows), "--", *WORDS[:3], *extra,
           *WORDS[3:], "--data.init_args.paths", f"[{cwd.parent / 'corpus'}]"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    if point == "none":
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-3000:])
    return done


def recorded(path: Path) -> list[tuple[int, list[str]]]:
    """(batch index, row digests) of each micro-batch a process trained on, in order."""
    lines = [line.split() for line in path.read_text().splitlines()]
    return [(int(batch_idx), digests) for _, batch_idx, *digests in lines]


def data_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["PretrainingDataModule"]


def timer_elapsed(checkpoint: Path) -> float:
    callbacks = torch.load(checkpoint, map_location="cpu", weights_only=False)["callbacks"]
    return next(state for name, state in callbacks.items() if name.startswith("Timer"))["time_elapsed"]["train"]


def metrics(cwd: Path) -> dict[int, dict[str, str]]:
    """The training rows of every metrics.csv of the run, by step; a later version's row wins."""
    by_step = {}
    for path in sorted((cwd / RUN).glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("train/lr"):
                    by_step[int(row["step"])] = row
    return by_step


def store_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "card.json"}  # the card holds the build's duration


def stores(cache: Path) -> list[Path]:
    """The finished stores in a cache (not the locks, not the temporary folders of builds)."""
    return [p for p in (cache / "stores").iterdir() if p.is_dir() and not p.name.startswith(".")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the whole epoch: its folder, its cache and the rows it trained on, in order."""
    top = tmp_path_factory.mktemp("kill")
    write_corpus(top / "corpus", n_files=3, paragraphs=12)
    cwd = top / "reference"
    cwd.mkdir()
    train(cwd, top / "cache")
    rows = [digests for _, digests in recorded(cwd / "rows-0.txt")]
    return cwd, top / "cache", rows


@pytest.mark.slow
def test_killed_mid_step_in_validation_and_mid_checkpoint_a_resumed_run_is_the_uninterrupted_one(reference):
    ref_cwd, cache, ref_rows = reference
    cwd = ref_cwd.parent / "killed"
    cwd.mkdir()
    # every train row of the store, once: the reference trained the epoch's full batches, each row at most once
    epoch = Counter(row for batch in ref_rows for row in batch)
    assert max(epoch.values()) == 1 and len(ref_rows) >= 12

    # 15 micro-batches, 12 optimizer steps (8 rows each up to step 8, then 16); one validation batch; a resumed run
    # writes into a version folder of its own and runs no sanity check
    kills = [("checkpoint", 4, 2),  # saves after step 2 (epoch=0-step=2, last), after step 4: last.ckpt half written
             ("validation", 2, 8),  # resumed at step 2: inside the validation after step 8 (last.ckpt of step 8 saved)
             ("step", 3, 8)]        # resumed at step 8: inside the second micro-batch of a 2-batch window
    segments, resumed_from = [], []
    for i, (point, n, resumable_step) in enumerate(kills):
        before = {p: p.read_bytes() for p in (cwd / RUN).rglob("*.ckpt")}
        train(cwd, cache, point, n, *(["--ckpt_path", "last"] if i else []))
        last = find_last_checkpoint([cwd / RUN])
        assert last is not None, f"killed at {point}: no last*.ckpt to resume"
        assert Checkpoint.read(last).contents["global_step"] == resumable_step, point  # whole, and the newest whole
        for path, content in before.items():  # a killed run never touches an earlier run's checkpoints
            assert path.read_bytes() == content, f"{path} changed by a killed run"
        if point == "checkpoint":  # the half-written last.ckpt exists, hidden; the previous last.ckpt is whole
            assert list((cwd / RUN).rglob(".last.ckpt.*.ckpt")), "the kill came before the checkpoint's bytes"
        segments.append(recorded(cwd / f"rows-{i}.txt"))
        resumed_from.append((last, data_state(last)["batches"], timer_elapsed(last)))
    train(cwd, cache, "none", 0, "--ckpt_path", "last")
    segments.append(recorded(cwd / f"rows-{len(kills)}.txt"))

    # the rows whose updates the final weights hold: each killed process's up to the checkpoint resumed next
    trained = [digests for segment, (_, batches, _) in zip(segments, resumed_from)
               for batch_idx, digests in segment if batch_idx < batches] + [d for _, d in segments[-1]]
    assert Counter(r for b in trained for r in b) == epoch  # no row repeated, none skipped
    assert trained == ref_rows  # and in the same order

    final = find_last_checkpoint([cwd / RUN])
    reference_final = find_last_checkpoint([ref_cwd / RUN])
    # the budget clock went on from the checkpoint's elapsed time, not from zero
    assert timer_elapsed(final) > resumed_from[-1][2] > 0
    # the LR, the batch-size ramp and the token count continue where they were: step by step the reference's
    ref_metrics, got = metrics(ref_cwd), metrics(cwd)
    first_resumed = torch.load(resumed_from[-1][0], weights_only=False)["global_step"]
    assert set(range(first_resumed, max(ref_metrics) + 1)) <= set(got)
    for step, row in got.items():
        assert float(row["train/lr"]) == pytest.approx(float(ref_metrics[step]["train/lr"]), rel=1e-6), step
        assert row["train/batch_size"] == ref_metrics[step]["train/batch_size"], step
        assert row["train/tokens_seen"] == ref_metrics[step]["train/tokens_seen"], step
    assert {row["train/batch_size"] for row in ref_metrics.values()} == {"8.0", "16.0"}  # the ramp did ramp
    # deterministic mode: the final weights are the uninterrupted run's
    ours, theirs = Checkpoint.read(final).contents, Checkpoint.read(reference_final).contents
    assert ours["global_step"] == theirs["global_step"]
    for name, tensor in theirs["state_dict"].items():
        torch.testing.assert_close(ours["state_dict"][name], tensor, rtol=0, atol=WEIGHTS_ATOL, msg=name)


@pytest.mark.slow
def test_a_store_killed_while_prepared_is_rebuilt_never_read(reference, monkeypatch):
    ref_cwd, ref_cache, _ = reference
    cwd = ref_cwd.parent / "prepare"
    cwd.mkdir()
    cache = cwd.parent / "prepare-cache"
    for point in ("dedup", "tokenizer", "shard"):
        train(cwd, cache, point, 1)
        assert not stores(cache), f"killed during {point}: a store is in place"
        assert list((cache / "stores").glob(".tmp-*")), f"{point}: the kill came after the build"
        assert find_last_checkpoint([cwd / RUN]) is None
    # the same command prepares again (in this process: `python -m lit_lm.data prepare` with train.py's words)
    monkeypatch.setenv("LIT_LM_CACHE", str(cache))
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["python -m lit_lm.data"])
    card = prepare([*WORDS[1:3], *DATA, "--data.init_args.paths", f"[{cwd.parent / 'corpus'}]"])
    assert card["cache_hit"] is False  # built again, not read
    (built,), (reference_store,) = stores(cache), stores(ref_cache)
    assert not list((cache / "stores").glob(".tmp-*"))  # the killed builds' leftovers are gone
    assert store_files(built) == store_files(reference_store)  # byte for byte the uninterrupted build's store
