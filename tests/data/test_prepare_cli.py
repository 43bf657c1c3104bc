"""``python -m lit_lm.data prepare`` and ``python train.py prepare``: train.py's parser builds or reuses the store and
prints the data card as the last line; nothing else is written."""

import json
import subprocess
import sys

import pytest
import yaml

from lit_lm.data.__main__ import main, prepare
from tests.conftest import ROOT

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
CRAMMED_GPT = str(ROOT / "configs" / "recipes" / "crammed-gpt.yaml")
CARD_KEYS = {"docs_in", "docs_out", "exact_duplicates", "near_duplicates", "tokens", "sequences", "seconds",
             "cache_hit"}


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["python -m lit_lm.data"])  # not pytest's own arguments


def last_json_line(cmd: list[str], cwd) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_prepare_prints_the_data_card_as_one_json_line_and_reuses_the_store(corpus, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    args = ["prepare", "--config", QUICKSTART, "--data.init_args.paths", f"[{corpus}]", "--data.init_args.split",
            "paragraph", "--data.init_args.tokenizer.vocab_size", "300", "--data.init_args.cache_dir",
            str(tmp_path / "cache")]
    first = last_json_line([sys.executable, "-m", "lit_lm.data", *args], work)
    second = last_json_line([sys.executable, str(ROOT / "train.py"), *args], work)  # the same command in train.py
    assert CARD_KEYS <= first.keys()
    assert first["cache_hit"] is False and second["cache_hit"] is True
    assert first["docs_in"] == 120 and first["tokens"] == second["tokens"] > 0
    assert first["store"] == second["store"]
    assert list(work.iterdir()) == []  # no runs/ folder, no logs, no checkpoints, no lightning_logs


def test_prepare_takes_every_form_of_override_fit_takes(corpus, tmp_path, monkeypatch):
    """Short ``--data.*`` names, several ``--config`` files (a base and a delta) and a data section from a file."""
    monkeypatch.chdir(tmp_path)
    delta = tmp_path / "delta.yaml"
    delta.write_text(yaml.safe_dump({"data": {"init_args": {"split": "paragraph", "seq_length": 32}}}))
    common = ["--data.paths", f"[{corpus}]", "--data.tokenizer.vocab_size", "300", "--data.progress", "false",
              "--data.cache_dir", str(tmp_path / "cache")]
    card = prepare(["--config", QUICKSTART, "--config", str(delta), *common])
    assert card["cache_hit"] is False and card["docs_in"] == 120 and card["seq_length"] == 32
    again = prepare(["--config", QUICKSTART, *common, "--data.split", "paragraph", "--data.seq_length", "32"])
    assert again["cache_hit"] is True and again["store"] == card["store"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lightning_logs").exists()


def test_prepare_builds_a_decoder_recipe_store_without_a_run_folder(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    card = prepare(["--config", CRAMMED_GPT, "--data.paths", f"[{corpus}]", "--data.split", "paragraph",
                    "--data.tokenizer.vocab_size", "300", "--data.seq_length", "64", "--data.progress", "false",
                    "--trainer.accelerator", "cpu", "--trainer.devices", "1"])
    assert card["cache_hit"] is False and card["seq_length"] == 64 and card["tokenizer"]["kind"] == "byte_bpe"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow  # builds the embedded corpus's whole store (seconds)
@pytest.mark.xdist_group("embedded-corpus")  # one worker: tests/test_cli.py's quickstart run reuses this store
def test_prepare_on_the_default_corpus_needs_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    card = prepare(["--config", QUICKSTART, "--data.init_args.tokenizer.vocab_size", "2048",
                    "--data.init_args.progress", "false"])
    assert card["docs_in"] > 1000 and card["tokens"] > 200_000 and card["sources"][0]["source"].startswith("default")


@pytest.mark.slow
def test_a_bad_corpus_path_is_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lit_lm.data", "prepare", "--config", QUICKSTART,
                           "--data.paths", f"[{tmp_path / 'missing'}]"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: data.paths:")


def test_a_usage_line_without_the_prepare_command(capsys):
    with pytest.raises(SystemExit, match="usage: python -m lit_lm.data prepare --config"):
        main([])
