"""HeldOutLoss: the held-out set scored at evenly spaced points of a run, the budget clock paused meanwhile."""

import csv
import sys
import time

import pytest

from lit_lm.checkpoint import load_model
from lit_lm.heldout import HeldOutSet
from tests.conftest import ROOT, write_corpus
from tests.test_heldout import datamodule
from tests.test_recipes import TINY


def train(corpus, tmp_path, monkeypatch, *words):
    from lit_lm.cli import main

    path = HeldOutSet.from_datamodule(datamodule(corpus), "masked", sequences=8).save(tmp_path / "heldout.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    return main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY, "--data.init_args.paths",
                 f"[{corpus}]", "--data.init_args.tokenizer.kind=wordpiece", "--trainer.limit_val_batches=0",
                 "--trainer.callbacks+=lit_lm.callbacks.HeldOutLoss", f"--trainer.callbacks.init_args.path={path}",
                 "--trainer.callbacks.init_args.points=3", *words]), path


def logged(tmp_path) -> list[dict]:
    rows = []
    for path in sorted(tmp_path.rglob("metrics.csv")):
        rows += [r for r in csv.DictReader(open(path)) if r.get("heldout/loss")]
    return rows


def test_it_scores_at_evenly_spaced_steps_and_the_final_weights(corpus, tmp_path, monkeypatch):
    cli, path = train(corpus, tmp_path, monkeypatch, "--trainer.max_steps=12")
    rows = logged(tmp_path)
    assert [int(r["step"]) for r in rows] == [4, 8, 12]  # the last point is the final weights: not scored twice
    assert all(float(r["heldout/tokens_seen"]) > 0 for r in rows)
    assert float(rows[-1]["heldout/loss"]) < float(rows[0]["heldout/loss"])
    final = HeldOutSet.load(path).score(load_model(next(tmp_path.rglob("last.ckpt"))))
    assert float(rows[-1]["heldout/loss"]) == pytest.approx(final, abs=1e-5)


def test_the_budget_clock_is_paused_while_it_scores(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus", n_files=40, paragraphs=60)  # more than 3 s can train: the budget ends it
    score = HeldOutSet.score
    slept = []

    def slow_score(self, model, batch_size=64):
        time.sleep(1.0)
        slept.append(1.0)
        return score(self, model, batch_size)

    monkeypatch.setattr(HeldOutSet, "score", slow_score)
    start = time.monotonic()
    cli, _ = train(corpus, tmp_path, monkeypatch, "--trainer.max_time=00:00:00:03")
    wall = time.monotonic() - start
    timer = next(c for c in cli.trainer.callbacks if type(c).__name__ == "Timer")
    assert len(slept) >= 3  # three points and the final weights
    assert 2.5 < timer.time_elapsed() < 3.0 + 1.0  # the whole budget trained ...
    assert wall > timer.time_elapsed() + 0.9 * sum(slept)  # ... and the scoring came on top of it
    rows = logged(tmp_path)
    assert max(float(r["heldout/train_seconds"]) for r in rows) < 3.0 + 1.0
