"""``python -m lit_lm.data prepare --config <recipe>``: builds or reuses the store and prints the data card."""

import json
import subprocess
import sys

import pytest

from lit_lm.data.__main__ import main, prepare
from tests.conftest import ROOT

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
CARD_KEYS = {"docs_in", "docs_out", "exact_duplicates", "near_duplicates", "tokens", "sequences", "seconds", "cache_hit"}


def test_prepare_prints_the_data_card_as_one_json_line_and_reuses_the_store(corpus, tmp_path):
    cmd = [sys.executable, "-m", "lit_lm.data", "prepare", "--config", QUICKSTART,
           "--data.init_args.paths", f"[{corpus}]", "--data.init_args.split", "paragraph",
           "--data.init_args.tokenizer.vocab_size", "300", "--data.init_args.cache_dir", str(tmp_path / "cache")]
    cards = []
    for _ in range(2):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        cards.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert CARD_KEYS <= cards[0].keys()
    assert cards[0]["cache_hit"] is False and cards[1]["cache_hit"] is True
    assert cards[0]["docs_in"] == 120 and cards[0]["tokens"] == cards[1]["tokens"] > 0
    assert cards[0]["store"] == cards[1]["store"]


def test_prepare_on_the_default_corpus_needs_no_files():
    card = prepare(["--config", QUICKSTART, "--data.init_args.tokenizer.vocab_size", "2048", "--data.init_args.progress", "false"])
    assert card["docs_in"] > 1000 and card["tokens"] > 200_000 and card["sources"][0]["source"].startswith("default")


def test_a_usage_line_without_the_prepare_command(capsys):
    with pytest.raises(SystemExit, match="usage: python -m lit_lm.data prepare --config"):
        main([])
