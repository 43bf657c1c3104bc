"""Every notebook in notebooks/ runs top to bottom without error, on real runs trained here."""

import base64
import json
import re
import shutil
import struct
import sys
from pathlib import Path

import pytest

from lit_lm.cli import main
from tests.conftest import ROOT, write_corpus

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FIGURE_CELLS = {  # notebook -> {id of the cell that draws a figure: how many}
    "attention_maps.ipynb": {"b045d8f0": 1},  # every head of every layer
    "compare_runs.ipynb": {"cd4564c4": 1},  # the loss, validation and learning-rate curves
}
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
    cells = len(notebook.cells)
    if path.name == "compare_runs.ipynb":  # afterwards, in the same kernel: what the figure's panels hold
        notebook.cells.append(nbformat.v4.new_code_cell(
            "import json\nprint('FIGURE', json.dumps({'inches': list(fig.get_size_inches()), 'dpi': fig.dpi, "
            "'panels': [[ax.get_xlabel(), ax.get_ylabel(), len(ax.lines)] for ax in fig.axes]}))"))
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(two_runs)}}).execute()
    code = [cell for cell in notebook.cells[:cells] if cell.cell_type == "code"]
    outputs = [output for cell in code for output in cell.get("outputs", [])]
    printed = "".join(output.get("text", "") for output in outputs)
    # each figure comes from the cell that draws it, once, and no other cell draws one
    figures = {cell.id: [base64.b64decode(o["data"]["image/png"]) for o in cell.get("outputs", [])
                         if "image/png" in o.get("data", {})] for cell in code}
    drawn = {cell: len(pngs) for cell, pngs in figures.items() if pngs}
    assert drawn == FIGURE_CELLS[path.name], drawn
    (png,) = figures[next(iter(FIGURE_CELLS[path.name]))]
    width, height = png_size(png)
    if path.name == "compare_runs.ipynb":
        # every run is in the summary, with its losses
        assert all(name in printed for name in ("quickstart/version_0", "quickstart/version_1", "other/version_0"))
        # the 2 x 2 panels, each with a curve per run (3): loss by step and by tokens, validation loss, learning rate
        figure = json.loads(notebook.cells[-1].outputs[0]["text"].split("FIGURE ", 1)[1])
        assert figure["panels"] == [["step", "train/loss", 3], ["tokens seen", "train/loss", 3],
                                    ["step", "val/loss", 3], ["step", "learning rate", 3]]
        # the PNG is that 12 x 8 inch figure at its dpi, cropped by the inline backend to its drawn area (a tight
        # bounding box): the figure's tight_layout leaves margins of about a tenth of an inch, so the crop takes at
        # most 5% of either side, and never adds any
        full = [inches * figure["dpi"] for inches in figure["inches"]]
        assert figure["inches"] == [12.0, 8.0]
        assert all(0.95 * f <= size <= f + 1 for size, f in zip((width, height), full)), ((width, height), full)
    if path.name == "attention_maps.ipynb":
        # one heatmap per head, 2 layers x 2 heads: plot_attention's figure is 2.4 inches a panel, with margins of
        # 0.9 inches for the token labels (up to 40 tokens, else 0.15), 0.15 right and 0.3 on top, rendered by
        # figure_png at 100 dpi; a pixel either way for rounding inches x dpi to whole pixels
        layers, heads, tokens = map(int, re.search(r"(\d+) layers x (\d+) heads over (\d+) tokens", printed).groups())
        assert (layers, heads) == (2, 2)
        side = 0.9 if tokens <= 40 else 0.15
        expected = (100 * (2.4 * heads + side + 0.15), 100 * (2.4 * layers + side + 0.3))
        assert abs(width - expected[0]) <= 1 and abs(height - expected[1]) <= 1, ((width, height), expected)


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height of a PNG, from its header (the IHDR chunk)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} == set(FIGURE_CELLS)  # each with the figures it must draw
