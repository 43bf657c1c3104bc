"""What an ablation measured: one ``RunResult`` per variant and seed, the table, the JSON, both written atomically."""

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lit_lm.checkpoint import write_text_atomically


@dataclass
class RunResult:
    """One training run of one variant and seed, scored on the ablation's held-out set."""

    variant: str
    seed: int
    change: str
    heldout_loss: float | None
    """None: the run trained another objective than the reference (compared downstream only)."""
    parameters: int
    steps: int
    tokens_seen: int | None
    train_seconds: float
    process_seconds: float
    diverged_at_step: int | None = None
    checkpoint: str = ""
    words: list[str] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    """Held-out loss during training: dicts of train_seconds, tokens_seen, heldout_loss."""
    downstream: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_sec(self) -> float | None:
        return self.tokens_seen / self.train_seconds if self.tokens_seen and self.train_seconds else None

    def save(self, path: Path) -> None:
        write_text_atomically(path, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> "RunResult":
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class VariantSummary:
    """A variant over its seeds: the mean held-out loss, its spread, and its difference from the reference."""

    variant: str
    change: str
    runs: list[RunResult]
    loss: float | None  # None: another objective than the reference's, not scored on the held-out set
    spread: float | None  # sample standard deviation over seeds; None with one seed
    delta: float | None = None  # mean loss minus the reference's
    band: float | None = None  # the noise band of delta: two standard errors of the difference of two means

    @classmethod
    def of(cls, runs: list[RunResult]) -> "VariantSummary":
        losses = [r.heldout_loss for r in runs if r.heldout_loss is not None]
        return cls(runs[0].variant, runs[0].change, runs, statistics.fmean(losses) if losses else None,
                   statistics.stdev(losses) if len(losses) > 1 else None)

    def compare_with(self, reference: "VariantSummary") -> None:
        if self.loss is None or reference.loss is None:
            return
        self.delta = self.loss - reference.loss
        if self.spread is not None and reference.spread is not None:
            self.band = 2 * math.sqrt(self.spread**2 / len(self.runs) + reference.spread**2 / len(reference.runs))

    def mean(self, key: str) -> float | None:
        values = [getattr(r, key) for r in self.runs if getattr(r, key) is not None]
        return statistics.fmean(values) if values else None


def summarize(results: list[RunResult], order: list[str], reference: str) -> list[VariantSummary]:
    """One summary per variant that has results, in ``order``, each compared with ``reference``'s."""
    summaries = [VariantSummary.of([r for r in results if r.variant == name]) for name in order
                 if any(r.variant == name for r in results)]
    ref = next((s for s in summaries if s.variant == reference), None)
    for summary in summaries:
        if ref is not None and summary is not ref:
            summary.compare_with(ref)
    return summaries


def markdown_table(summaries: list[VariantSummary], reference: str, seeds: int, tasks: list[str] = ()) -> str:
    """The results table: one row per variant; with several seeds the loss is mean ± standard deviation."""
    loss_header = "held-out loss" + (f" (mean ± sd, {seeds} seeds)" if seeds > 1 else "")
    header = ["variant", "change", "parameters", "optimizer steps", "tokens seen", "tokens/s", loss_header,
              f"vs {reference}" + (" (± noise band)" if seeds > 1 else ""), *tasks]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for s in summaries:
        change = s.change + "".join(f" (loss non-finite at step {r.diverged_at_step}, seed {r.seed}: scored the last "
                                    f"good weights)" for r in s.runs if r.diverged_at_step is not None)
        loss = ("n/a: other objective" if s.loss is None
                else f"{s.loss:.3f}" + (f" ± {s.spread:.3f}" if s.spread is not None else ""))
        delta = "" if s.delta is None else f"{s.delta:+.3f}" + (f" ± {s.band:.3f}" if s.band is not None else "")
        downstream = [fmt_score(statistics.fmean(v) if (v := [r.downstream[t] for r in s.runs if t in r.downstream])
                                else None) for t in tasks]
        row = [s.variant, change, f"{s.runs[0].parameters:,}", fmt_int(s.mean("steps")), fmt_int(s.mean("tokens_seen")),
               fmt_int(s.mean("tokens_per_sec")), loss, delta, *downstream]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def fmt_int(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def fmt_score(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"
