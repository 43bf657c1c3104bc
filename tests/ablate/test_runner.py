"""python -m lit_lm.ablate: two variants at tiny shapes train under the same budget into a table, a JSON file and
two plots; run again, it keeps what finished and resumes what did not."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_lm.ablate.__main__ import main
from lit_lm.heldout import HeldOutSet
from tests.conftest import ROOT
from tests.test_recipes import TINY

PNG = b"\x89PNG\r\n\x1a\n"


def ablation_file(tmp_path, variants: str):
    path = tmp_path / "two.yaml"
    path.write_text("# Two variants at tiny shapes. Checks: the runner.\n"
                    f"base: {ROOT / 'configs' / 'quickstart.yaml'}\nvariants:\n{variants}")
    return path


def words(corpus) -> list[str]:
    tiny = [f"{TINY[i]}={TINY[i + 1]}" for i in range(0, len(TINY), 2) if "trainer" not in TINY[i]]
    return [*tiny, f"--data.init_args.paths=[{corpus}]"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One two-variant ablation, 0.1 minute per run (the budget clock), on a generated corpus, interrupted with
    Ctrl-C (SIGINT to the whole process group, as a terminal sends it) in the middle of the second run, then run
    again with the same command to the end."""
    from tests.conftest import write_corpus

    tmp = tmp_path_factory.mktemp("ablation")
    corpus = write_corpus(tmp / "corpus", n_files=40, paragraphs=60)  # more rows than 6 s can train: the budget ends it
    path = ablation_file(tmp, "  base: []\n  short-warmup: [--trainer.callbacks.OneCycleLR.warmup_fraction=0.01]\n")
    out = tmp / "out"
    command = [str(path), "--minutes", "0.1", "--out", str(out), "--eval-sequences", "16", "--points", "3", "--",
               *words(corpus)]
    second = out / "runs" / "short-warmup" / "seed0"
    # SIGINT as a terminal gives it: a CI job started in the background inherits SIGINT ignored, and Python then never
    # turns it into KeyboardInterrupt, so the runner (and the training it starts) gets the default disposition back
    runner = subprocess.Popen([sys.executable, "-m", "lit_lm.ablate", *command], cwd=ROOT, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not any("heldout/loss" in p.read_text() for p in second.rglob("metrics.csv")):  # a third of it trained
        assert runner.poll() is None and time.monotonic() < deadline, "the second run never started training"
        time.sleep(0.2)
    os.killpg(runner.pid, signal.SIGINT)
    interrupted = {"exit": runner.wait(timeout=120), "stderr": runner.stderr.read(),
                   "result": (second / "result.json").exists(), "checkpoints": list(second.rglob("last*.ckpt")),
                   "first_log": (out / "runs" / "base" / "seed0" / "train.log").read_text()}
    assert main(command) == 0
    return path, out, corpus, interrupted


def test_two_variants_give_the_table_the_json_and_both_plots(finished):
    _, out, _, _ = finished
    results = json.loads((out / "results.json").read_text())
    runs = {r["variant"]: r for r in results["runs"]}
    assert list(runs) == ["base", "short-warmup"] and results["reference"] == "base"
    heldout = HeldOutSet.load(out / "heldout.pt")
    assert results["heldout"]["scored_tokens"] == heldout.scored_tokens > 0
    for run in runs.values():
        assert run["steps"] > 0 and run["tokens_seen"] > 0 and run["parameters"] > 1000
        assert 5.0 <= run["train_seconds"] <= 6.0 + 4.0, run  # the budget clock: 0.1 minute (and the last step)
        curve = run["curve"]
        assert len(curve) >= 2 and curve[-1]["heldout_loss"] == pytest.approx(run["heldout_loss"], 1e-4), curve
        assert [p["step"] for p in curve] == sorted({p["step"] for p in curve}) and curve[-1]["step"] == run["steps"]
    delta = runs["short-warmup"]["heldout_loss"] - runs["base"]["heldout_loss"]
    assert results["variants"][1]["delta"] == pytest.approx(delta)
    table = (out / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| short-warmup |"))
    assert "OneCycleLR.warmup_fraction=0.01" in row and f"{delta:+.3f}" in row
    assert re.search(r"\| base \|  \| [\d,]+ \| \d+ \| [\d,]+ \| [\d,]+ \| \d+\.\d{3} \|  \|", table)
    assert "python -m lit_lm.ablate" in table and "Machine:" in table
    for name in ("loss_vs_time.png", "loss_vs_tokens.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000


def test_interrupted_it_keeps_finished_runs_and_resumes_the_interrupted_one_with_its_remaining_budget(finished):
    _, out, _, interrupted = finished
    assert interrupted["exit"] == 130 and "run the same command again to resume" in interrupted["stderr"]
    assert not interrupted["result"] and interrupted["checkpoints"]  # stopped with a checkpoint, not finished
    assert (out / "runs" / "base" / "seed0" / "train.log").read_text() == interrupted["first_log"]  # not retrained
    second = out / "runs" / "short-warmup" / "seed0"
    assert "--ckpt_path=last" in (second / "command.txt").read_text()
    result = json.loads((second / "result.json").read_text())
    assert 5.0 <= result["train_seconds"] <= 6.0 + 4.0  # one budget in all, across the interruption
    assert len(list(second.rglob("metrics.csv"))) == 2  # the resumed run logged into a version of its own
    assert len(result["curve"]) >= 2


def test_other_settings_in_the_same_folder_and_a_variant_changing_the_data_are_refused(finished, tmp_path, capsys):
    path, out, corpus, _ = finished
    assert main([str(path), "--minutes", "0.2", "--out", str(out), "--", *words(corpus)]) == 2
    assert "other settings (minutes" in capsys.readouterr().err
    changing = ablation_file(tmp_path, "  base: []\n  more-held-out: [--data.init_args.val_fraction=0.3]\n")
    assert main([str(changing), "--minutes", "0.1", "--out", str(tmp_path / "out"), "--", *words(corpus)]) == 2
    assert "changes the data settings (val_fraction)" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()  # refused before anything trained


def test_downstream_fine_tunes_every_run_and_adds_a_column(finished, tmp_path):
    from tests.glue.test_suite import write_task

    path, out, corpus, _ = finished
    task = write_task(tmp_path / "task", "bright", rows=48)
    assert main([str(path), "--minutes", "0.1", "--out", str(out), "--eval-sequences", "16", "--points", "3",
                 "--downstream", str(task), "--", *words(corpus)]) == 0
    results = json.loads((out / "results.json").read_text())
    scores = [run["downstream"]["bright"] for run in results["runs"]]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    table = (out / "results.md").read_text()
    assert next(line for line in table.splitlines() if line.startswith("| variant |")).endswith("| bright |")
    for run in results["runs"]:
        assert f"{100 * run['downstream']['bright']:.1f} |" in next(
            line for line in table.splitlines() if line.startswith(f"| {run['variant']} |"))


def test_the_peer_is_scored_like_every_run_through_from_hf(tmp_path, monkeypatch):
    """The runner's side of the peer (its own training is tests/ablate/test_hf_peer.py): the saved BertForMaskedLM
    converted with from_hf, scored on the held-out set, and its curve read, all from the peer's own folder."""
    import torch
    import transformers
    from tqdm import tqdm

    import lit_lm.ablate.hf_peer as hf_peer
    from lit_lm.ablate.runner import Runner, Settings
    from lit_lm.ablate.spec import read_ablation
    from lit_lm.models.output import IGNORE_INDEX

    path = ablation_file(tmp_path, "  base: []\n  hf: {peer: hf-trainer}\n")
    ablation = read_ablation(path)
    runner = Runner(ablation, Settings(0.1, tmp_path / "out"))
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

    def fake_peer(config, seconds, heldout, out):
        assert config["seed_everything"] == 0 and seconds == 6 and Path(heldout) == heldout_path
        bert.save_pretrained(out / "model")
        (out / "curve.csv").write_text("step,train_seconds,tokens_seen,heldout_loss\n1,3.0,96,4.5\n2,6.0,192,4.2\n")
        return {"steps": 2, "train_seconds": 6.0, "tokens_seen": 192, "heldout_loss": 4.2, "parameters": 1}

    monkeypatch.setattr(hf_peer, "run_hf_peer", fake_peer)
    result = runner.train_peer(ablation.variants[1], 0, heldout_path, tqdm(disable=True))
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
    runner = Runner(ablation, Settings(0.1, tmp_path / "out"))
    with pytest.raises(AblationFileError, match="trains a replaced-token detection model, the reference a masked "
                                                "one: .* add --downstream"):
        runner.resolve()
    runner.settings.downstream = ["sst2"]
    runner.resolve()
    assert runner.other_objective == {"electra"}
    base, electra = ablation.variants
    assert not any("HeldOutLoss" in w for w in runner.train_words(electra, 0, tmp_path / "heldout.pt"))
    assert any("HeldOutLoss" in w for w in runner.train_words(base, 0, tmp_path / "heldout.pt"))
    results = [RunResult("base", 0, "", 5.0, 10, 3, 96, 1.0, 1.0, downstream={"sst2": 0.8}),
               RunResult("electra", 0, "ELECTRA", None, 12, 2, 64, 1.0, 1.0, downstream={"sst2": 0.82})]
    table = markdown_table(summarize(results, ["base", "electra"], "base"), "base", 1, ["sst2"])
    row = next(line for line in table.splitlines() if line.startswith("| electra |"))
    assert "n/a: other objective" in row and row.endswith("| 82.0 |")
