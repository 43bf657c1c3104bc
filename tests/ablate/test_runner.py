"""python -m lit_lm.ablate: two variants at tiny shapes train the same number of optimizer steps (--steps) into a
table, a JSON file and two plots; interrupted and run again, it keeps what finished and resumes what did not. Nothing
here depends on the machine's speed: every run trains exactly STEPS steps, and what is checked is counted."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_lm.ablate.__main__ import main, parse
from lit_lm.ablate.budget import Budget
from lit_lm.heldout import HeldOutSet
from tests.conftest import ROOT
from tests.test_recipes import TINY

PNG = b"\x89PNG\r\n\x1a\n"
STEPS, POINTS, PAUSE = 6, 3, 3
"""Every run trains STEPS optimizer steps and scores the held-out set after steps 2, 4, 6; the second run is
interrupted (Ctrl-C) after step PAUSE."""
BATCH = 4  # TINY's data.batch_size, no accumulation in quickstart.yaml
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def ablation_file(tmp_path, variants: str):
    path = tmp_path / "two.yaml"
    path.write_text("# Two variants at tiny shapes. Checks: the runner.\n"
                    f"base: {QUICKSTART}\nvariants:\n{variants}")
    return path


def words(corpus) -> list[str]:
    tiny = [f"{TINY[i]}={TINY[i + 1]}" for i in range(0, len(TINY), 2) if "trainer" not in TINY[i]]
    return [*tiny, f"--data.init_args.paths=[{corpus}]", "--trainer.precision=32-true"]  # not auto: the CPU's pick


def tokens_per_step(corpus, steps: int) -> list[int]:
    """The real tokens (attention-mask sum) of the first ``steps`` batches lit-lm's own training loader serves: what
    ThroughputMFU must have counted after each step."""
    from lit_lm.ablate.hf_peer import load_data
    from lit_lm.cli import resolved_config

    loader = iter(load_data(resolved_config(QUICKSTART, *words(corpus))).train_dataloader())
    counts = [int(next(loader)["attention_mask"].sum()) for _ in range(steps)]
    assert all(0 < n <= BATCH * 32 for n in counts)  # 4 rows of at most 32 tokens
    return [sum(counts[:k + 1]) for k in range(steps)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One two-variant ablation of STEPS steps per run, on a generated corpus, interrupted with Ctrl-C (SIGINT to the
    whole process group, as a terminal sends it) while the second run waits after step PAUSE (tests/ablate/pause.py),
    then run again with the same command to the end. Every run's words set a recipe max_time of zero, which would
    end it after its first step: the --steps budget must lift it."""
    from tests.conftest import write_corpus

    tmp = tmp_path_factory.mktemp("ablation")
    corpus = write_corpus(tmp / "corpus", n_files=10, paragraphs=20)  # more rows than STEPS x BATCH
    path = ablation_file(tmp, "  base: []\n  short-warmup: [--trainer.callbacks.OneCycleLR.warmup_fraction=0.01]\n")
    out = tmp / "out"
    flag = tmp / "paused"
    every_run = [*words(corpus), "--trainer.max_time=00:00:00:00", "--trainer.callbacks+=tests.ablate.pause.PauseAt",
                 f"--trainer.callbacks.init_args.step={PAUSE}", "--trainer.callbacks.init_args.run=short-warmup",
                 f"--trainer.callbacks.init_args.flag={flag}"]
    command = [str(path), "--steps", str(STEPS), "--out", str(out), "--eval-sequences", "16", "--points", str(POINTS),
               "--", *every_run]
    second = out / "runs" / "short-warmup" / "seed0"
    # SIGINT as a terminal gives it: a CI job started in the background inherits SIGINT ignored, and Python then never
    # turns it into KeyboardInterrupt, so the runner (and the training it starts) gets the default disposition back
    runner = subprocess.Popen([sys.executable, "-m", "lit_lm.ablate", *command], cwd=ROOT, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600  # only against hanging: the event waited for is the pause
    while not flag.exists():
        assert runner.poll() is None and time.monotonic() < deadline, "the second run never reached its pause"
        time.sleep(0.2)
    os.killpg(runner.pid, signal.SIGINT)
    interrupted = {"exit": runner.wait(timeout=300), "stderr": runner.stderr.read(),
                   "result": (second / "result.json").exists(), "checkpoints": list(second.rglob("last*.ckpt")),
                   "first_log": (out / "runs" / "base" / "seed0" / "train.log").read_text()}
    assert main(command) == 0
    return path, out, corpus, every_run, interrupted


@pytest.mark.slow
def test_every_run_trains_the_given_steps_into_the_table_the_json_and_both_plots(finished):
    _, out, corpus, _, _ = finished
    results = json.loads((out / "results.json").read_text())
    assert results["budget"] == {"kind": "steps", "value": STEPS} and results["minutes"] is None
    manifest = json.loads((out / "ablation.json").read_text())
    assert manifest["budget"] == {"kind": "steps", "value": STEPS} and manifest["minutes"] is None
    runs = {r["variant"]: r for r in results["runs"]}
    assert list(runs) == ["base", "short-warmup"] and results["reference"] == "base"
    heldout = HeldOutSet.load(out / "heldout.pt")
    assert results["heldout"]["scored_tokens"] == heldout.scored_tokens > 0
    tokens = tokens_per_step(corpus, STEPS)
    for run in runs.values():
        # exactly STEPS steps (not 1: the recipe's zero max_time was lifted), on the loader's first STEPS batches
        assert run["steps"] == STEPS and run["tokens_seen"] == tokens[-1], run
        assert run["diverged_at_step"] is None and run["parameters"] > 1000
        assert run["tokens_per_sec"] == pytest.approx(run["tokens_seen"] / run["train_seconds"])  # the clock ran
        curve = run["curve"]
        assert [p["step"] for p in curve] == [2, 4, 6]  # POINTS scores, evenly over the steps
        assert [p["tokens_seen"] for p in curve] == [tokens[1], tokens[3], tokens[5]]
        assert all(a["train_seconds"] < b["train_seconds"] for a, b in zip(curve, curve[1:]))  # the TrainingClock
        assert curve[-1]["heldout_loss"] == pytest.approx(run["heldout_loss"], 1e-4)
    delta = runs["short-warmup"]["heldout_loss"] - runs["base"]["heldout_loss"]
    assert results["variants"][1]["delta"] == pytest.approx(delta)
    assert [v["steps"] for v in results["variants"]] == [STEPS, STEPS]
    table = (out / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| short-warmup |"))
    assert "OneCycleLR.warmup_fraction=0.01" in row and f"{delta:+.3f}" in row
    base = next(line for line in table.splitlines() if line.startswith("| base |"))
    assert re.fullmatch(rf"\| base \|  \| [\d,]+ \| {STEPS} \| {tokens[-1]:,} \| [\d,]+ \| "
                        rf"{runs['base']['heldout_loss']:.3f} \|  \|", base), base
    assert f"Every run trained from scratch for {STEPS} optimizer steps (" in table
    assert re.search(rf"Command: `python -m lit_lm\.ablate \S+two\.yaml --steps {STEPS} --out ", table)
    assert "--minutes" not in table and "Machine:" in table
    for name in ("loss_vs_time.png", "loss_vs_tokens.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000


@pytest.mark.slow
def test_interrupted_it_keeps_finished_runs_and_resumes_the_interrupted_one_to_the_same_steps(finished):
    from lit_lm.checkpoint import Checkpoint

    _, out, corpus, _, interrupted = finished
    assert interrupted["exit"] == 130 and "run the same command again to resume" in interrupted["stderr"]
    assert f"/{2 * STEPS} steps" in interrupted["stderr"]  # the progress bar counts steps: the first run's 6 of 12
    assert not interrupted["result"] and interrupted["checkpoints"]  # stopped with a checkpoint, not finished
    assert [int(Checkpoint.read(c).contents["global_step"]) for c in interrupted["checkpoints"]] == [PAUSE]
    assert (out / "runs" / "base" / "seed0" / "train.log").read_text() == interrupted["first_log"]  # not retrained
    second = out / "runs" / "short-warmup" / "seed0"
    assert "--ckpt_path=last" in (second / "command.txt").read_text()
    result = json.loads((second / "result.json").read_text())
    # STEPS in all across the interruption, every row once: the tokens of the loader's first STEPS batches
    assert result["steps"] == STEPS and result["tokens_seen"] == tokens_per_step(corpus, STEPS)[-1]
    logs = sorted(second.rglob("metrics.csv"))
    assert len(logs) == 2  # the resumed run logged into a version of its own
    scored = [[int(float(row["step"])) for row in csv.DictReader(path.open()) if row.get("heldout/loss")]
              for path in logs]
    assert scored == [[2], [4, 6]]  # before the pause, then after it: the schedule of scores went on
    assert [p["step"] for p in result["curve"]] == [2, 4, 6]


@pytest.mark.slow
def test_other_settings_in_the_same_folder_and_a_variant_changing_the_data_are_refused(finished, tmp_path, capsys):
    path, out, corpus, every_run, _ = finished
    same = ["--out", str(out), "--eval-sequences", "16", "--points", str(POINTS), "--", *every_run]
    assert main([str(path), "--steps", str(STEPS + 1), *same]) == 2
    assert f"other settings (budget: --steps {STEPS});" in capsys.readouterr().err
    assert main([str(path), "--minutes", "0.1", *same]) == 2
    assert f"other settings (budget: --steps {STEPS});" in capsys.readouterr().err
    changing = ablation_file(tmp_path, "  base: []\n  more-held-out: [--data.init_args.val_fraction=0.3]\n")
    assert main([str(changing), "--steps", "2", "--out", str(tmp_path / "out"), "--", *words(corpus)]) == 2
    assert "changes the data settings (val_fraction)" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()  # refused before anything trained


@pytest.mark.slow
def test_downstream_fine_tunes_every_run_and_adds_a_column(finished, tmp_path):
    from tests.glue.test_suite import dev_scores, write_task

    path, out, _, every_run, _ = finished
    task = write_task(tmp_path / "task", "bright", rows=48)
    assert main([str(path), "--steps", str(STEPS), "--out", str(out), "--eval-sequences", "16", "--points",
                 str(POINTS), "--downstream", str(task), "--", *every_run]) == 0
    results = json.loads((out / "results.json").read_text())
    table = (out / "results.md").read_text()
    assert next(line for line in table.splitlines() if line.startswith("| variant |")).endswith("| bright |")
    for run in results["runs"]:
        suite = json.loads((out / "downstream" / run["variant"] / "seed0" / "results.json").read_text())["results"]
        assert [(r["column"], r["task"]) for r in suite] == [(run["variant"], "bright")]
        assert suite[0]["settings"]["checkpoint"] == run["checkpoint"]  # fine-tuned from this run's weights
        # the column's score: the fine-tuned weights' accuracy on the 16 dev rows, recomputed from what they saved
        assert run["downstream"]["bright"] == pytest.approx(dev_scores(suite[0]["run_dir"], task)["accuracy"],
                                                            abs=1e-6)
        assert f"{100 * run['downstream']['bright']:.1f} |" in next(
            line for line in table.splitlines() if line.startswith(f"| {run['variant']} |"))


def test_exactly_one_budget_is_given_and_a_steps_budget_sets_max_steps_and_lifts_max_time(capsys):
    from lit_lm.cli import resolved_config

    for argv, message in (([], "one of the arguments --minutes --steps is required"),
                          (["--minutes", "1", "--steps", "5"], "argument --steps: not allowed with argument --minutes"),
                          (["--steps", "0"], "--steps"), (["--minutes", "0"], "--minutes must be > 0")):
        with pytest.raises(SystemExit) as exit_:
            parse(["a.yaml", "--out", "o", *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert parse(["a.yaml", "--out", "o", "--steps", "500"])[0].budget == Budget("steps", 500)
    assert parse(["a.yaml", "--out", "o", "--minutes", "1.5"])[0].budget == Budget("minutes", 1.5)
    steps, minutes = Budget("steps", 500), Budget("minutes", 1.5)
    assert (steps.option, minutes.option) == (["--steps", "500"], ["--minutes", "1.5"])
    assert minutes.train_words() == ["--trainer.max_time=00:00:01:30"]  # as before budgets had kinds
    config = resolved_config(QUICKSTART, "--trainer.max_time=00:00:00:01", *steps.train_words())
    assert config["trainer"]["max_steps"] == 500 and config["trainer"]["max_time"] is None  # after a recipe's own
    assert config["trainer"]["callbacks"][-1]["class_path"] == "lit_lm.ablate.budget.TrainingClock"


@pytest.mark.parametrize("budget", [Budget("steps", 6), Budget("minutes", 0.1)], ids=["steps", "minutes"])
def test_the_peer_is_scored_like_every_run_through_from_hf(tmp_path, monkeypatch, budget):
    """The runner's side of the peer (its own training is tests/ablate/test_hf_peer.py): the saved BertForMaskedLM
    converted with from_hf, scored on the held-out set, and its curve read, all from the peer's own folder; the peer
    gets the ablation's budget, steps or seconds."""
    import transformers

    import lit_lm.ablate.hf_peer as hf_peer
    from lit_lm.ablate.runner import Runner, Settings
    from lit_lm.ablate.spec import read_ablation
    from lit_lm.models.output import IGNORE_INDEX

    path = ablation_file(tmp_path, "  base: []\n  hf: {peer: hf-trainer}\n")
    ablation = read_ablation(path)
    runner = Runner(ablation, Settings(budget, tmp_path / "out"))
    runner.configs["base"] = {"seed_everything": 0}
    ids = torch.randint(5, 60, (4, 12))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 3] = ids[:, 3]
    heldout = HeldOutSet(ids.masked_fill(labels != IGNORE_INDEX, 4), labels, torch.ones_like(ids), "masked")
    heldout_path = heldout.save(tmp_path / "heldout.pt")
    torch.manual_seed(0)
    bert = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16)).eval()

    def fake_peer(config, seconds, heldout, out, max_steps=None):
        assert config["seed_everything"] == 0 and Path(heldout) == heldout_path
        assert (seconds, max_steps) == ((None, 6) if budget.kind == "steps" else (6, None))
        bert.save_pretrained(out / "model")
        (out / "curve.csv").write_text("step,train_seconds,tokens_seen,heldout_loss\n1,3.0,96,4.5\n2,6.0,192,4.2\n")
        return {"steps": 2, "train_seconds": 6.0, "tokens_seen": 192, "heldout_loss": 4.2, "parameters": 1}

    monkeypatch.setattr(hf_peer, "run_hf_peer", fake_peer)
    class Bar:  # the progress bar: what the run added to it
        n = 0

        def update(self, n: int) -> None:
            self.n += n

    bar = Bar()
    result = runner.train_peer(ablation.variants[1], 0, heldout_path, bar)
    assert bar.n == 6  # its share of the progress bar: 6 steps, or 0.1 minute in budget-seconds
    with torch.no_grad():
        logits = bert(input_ids=heldout.inputs).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    assert result.heldout_loss == pytest.approx(expected.item(), abs=1e-5)  # scored by lit-lm, not taken from the peer
    assert result.parameters == sum(p.numel() for p in bert.parameters()) and result.steps == 2
    assert [p["heldout_loss"] for p in result.curve] == [4.5, 4.2]
    assert result.checkpoint.endswith("hf/seed0/peer/model")


def test_a_variant_with_another_objective_needs_downstream_and_reads_n_a_for_the_held_out_loss(tmp_path, monkeypatch):
    import functools

    import lit_lm.cli
    from lit_lm.ablate.results import RunResult, markdown_table, summarize
    from lit_lm.ablate.runner import Runner, Settings
    from lit_lm.ablate.spec import AblationFileError, read_ablation

    monkeypatch.setattr(lit_lm.cli, "resolved_config", functools.cache(lit_lm.cli.resolved_config))  # parse once
    variant = "--model.class_path=lit_lm.modules.ReplacedTokenDetectionModule"
    ablation = read_ablation(ablation_file(tmp_path, f"  base: []\n  electra: [{variant}]\n"))
    runner = Runner(ablation, Settings(Budget("steps", STEPS), tmp_path / "out"))
    with pytest.raises(AblationFileError, match="trains a replaced-token detection model, the reference a masked "
                                                "one: .* add --downstream"):
        runner.resolve()
    runner.settings.downstream = ["sst2"]
    runner.resolve()
    assert runner.other_objective == {"electra"}
    base, electra = ablation.variants
    assert not any("HeldOutLoss" in w for w in runner.train_words(electra, 0, tmp_path / "heldout.pt"))
    words = runner.train_words(base, 0, tmp_path / "heldout.pt")
    assert words.index("--trainer.callbacks+=lit_lm.ablate.budget.TrainingClock") < words.index(
        "--trainer.callbacks+=lit_lm.callbacks.HeldOutLoss")  # its init_args words reach HeldOutLoss, the last one
    results = [RunResult("base", 0, "", 5.0, 10, 3, 96, 1.0, 1.0, downstream={"sst2": 0.8}),
               RunResult("electra", 0, "ELECTRA", None, 12, 2, 64, 1.0, 1.0, downstream={"sst2": 0.82})]
    table = markdown_table(summarize(results, ["base", "electra"], "base"), "base", 1, ["sst2"])
    row = next(line for line in table.splitlines() if line.startswith("| electra |"))
    assert "n/a: other objective" in row and row.endswith("| 82.0 |")


def test_a_schedule_keyed_to_time_is_refused_under_a_steps_budget(tmp_path):
    from lit_lm.ablate.runner import Runner, Settings
    from lit_lm.ablate.spec import AblationFileError, read_ablation

    ablation = read_ablation(ablation_file(tmp_path, "  base: [--trainer.callbacks.OneCycleLR.key=time]\n"))
    with pytest.raises(AblationFileError, match="variant 'base': OneCycleLR follows the wall-clock budget"):
        Runner(ablation, Settings(Budget("steps", STEPS), tmp_path / "out")).resolve()
    Runner(ablation, Settings(Budget("minutes", 1), tmp_path / "out")).resolve()  # a budget of time has one
