"""The held-out loss of every variant against wall-clock training time and against tokens seen, as PNG files."""

from pathlib import Path

from lit_lm.ablate.results import RunResult
from lit_lm.checkpoint import write_file_atomically


def plot_curves(results: list[RunResult], order: list[str], out: Path, title: str) -> list[Path]:
    """Writes ``out/loss_vs_time.png`` and ``out/loss_vs_tokens.png``: one colour per variant, one line per seed,
    a marker at each held-out score. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    written = []
    colours = plt.get_cmap("tab20" if len(order) > 10 else "tab10")
    for key, label, name in (("train_seconds", "training time (s, budget clock)", "loss_vs_time.png"),
                             ("tokens_seen", "tokens seen", "loss_vs_tokens.png")):
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, variant in enumerate(order):
            for run in (r for r in results if r.variant == variant):
                points = [(p[key], p["heldout_loss"]) for p in run.curve if p.get(key) is not None]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, marker=".", color=colours(i % colours.N), alpha=0.9,
                            label=variant if run.seed == min(r.seed for r in results if r.variant == variant) else None)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out loss (same sequences and masks for every run)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        try:
            path = write_file_atomically(out / name, lambda tmp: fig.savefig(tmp, dpi=110))
        finally:
            plt.close(fig)
        written.append(path)
    return written
