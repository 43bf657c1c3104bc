"""Every notebook in notebooks/ runs top to bottom without error, on real runs trained here."""

import shutil
import sys
from pathlib import Path

import pytest

from lit_lm.cli import main
from tests.conftest import ROOT, write_corpus

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY_RUN = [
    "--model.init_args.config.hidden_size", "32", "--model.init_args.config.num_layers", "2",
    "--model.init_args.config.num_heads", "2", "--model.init_args.config.intermediate_size", "64",
    "--data.init_args.tokenizer.vocab_size", "300", "--data.init_args.seq_length", "32",
    "--data.init_args.batch_size", "8", "--data.init_args.split", "paragraph",
    "--trainer.max_steps", "12", "--trainer.val_check_interval", "6", "--trainer.limit_val_batches", "2",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """runs/quickstart run twice in the same folder, the second time with another learning rate: its versions 0
    and 1; and runs/other, a copy of the first, for a second run folder."""
    base = tmp_path_factory.mktemp("notebook-runs")
    corpus = write_corpus(base / "corpus")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        patch.setattr(sys, "argv", ["train.py"])
        for lr in ("2e-3", "5e-4"):
            main(["fit", "--config", QUICKSTART, *TINY_RUN, "--data.init_args.paths", f"[{corpus}]",
                  "--model.init_args.optimizer.lr", lr])
        first = base / "runs" / "quickstart" / "logs" / "version_0"
        shutil.copytree(first, base / "runs" / "other" / "logs" / "version_0")
    return base


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_on_real_runs(path, two_runs, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("LIT_LM_RUN", "runs/quickstart")
    monkeypatch.setenv("LIT_LM_RUNS", "runs/*")
    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(two_runs)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert any("image/png" in output.get("data", {}) for output in outputs), "no figure was drawn"
    printed = "".join(output.get("text", "") for output in outputs)
    if path.name == "compare_runs.ipynb":  # every run is in the summary, with its losses
        assert all(name in printed for name in ("quickstart/version_0", "quickstart/version_1", "other/version_0"))
    if path.name == "attention_maps.ipynb":  # one statistics row per head: 2 layers x 2 heads
        assert "2 layers x 2 heads" in printed


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"attention_maps.ipynb", "compare_runs.ipynb"}
