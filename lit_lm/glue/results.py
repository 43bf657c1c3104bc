"""The suite's results: one JSON file that a rerun reads to skip finished tasks, and the Markdown table written from it.

``results.json`` maps each column (a checkpoint, from pretrained or random weights) and task to what its fine-tune
scored on the validation file, with the settings it ran with. ``results.md`` shows one row per task and one column per
checkpoint, each cell the task's GLUE metric(s) in percent, and the average of the task scores (GLUE's convention:
a task with two metrics scores their mean).
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lit_lm.checkpoint import write_text_atomically

# How each metric the fine-tuning module logs is shown, in the order GLUE lists them.
METRIC_LABELS = {"f1": "F1", "accuracy": "accuracy", "matthews": "Matthews corr.", "pearson": "Pearson",
                 "spearman": "Spearman"}


@dataclass
class TaskResult:
    """One fine-tune: its metrics as fractions (``val/accuracy`` -> ``accuracy``), its score (their mean), and how it
    ran."""

    column: str
    task: str
    metrics: dict[str, float]
    score: float
    settings: dict
    steps: int = 0
    seconds: float = 0.0
    run_dir: str = ""


@dataclass
class Results:
    """Every finished fine-tune of a suite, kept in ``folder/results.json`` and shown in ``folder/results.md``."""

    folder: Path
    done: dict[str, dict[str, TaskResult]] = field(default_factory=dict)  # column -> task -> result
    columns: list[str] = field(default_factory=list)
    protocol: str = ""

    @classmethod
    def load(cls, folder: str | Path) -> "Results":
        folder = Path(folder)
        results = cls(folder)
        path = folder / "results.json"
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
                for item in saved["results"]:
                    result = TaskResult(**item)
                    results.done.setdefault(result.column, {})[result.task] = result
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path} is not a results file of `python -m lit_lm.glue` ({err}); choose another "
                                 f"--out folder or remove it.") from None
        return results

    def get(self, column: str, task: str) -> TaskResult | None:
        return self.done.get(column, {}).get(task)

    def add(self, result: TaskResult) -> None:
        self.done.setdefault(result.column, {})[result.task] = result
        self.save()

    def save(self) -> None:
        """Write results.json and results.md, each to a temporary file renamed into place (never half written)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        items = [asdict(r) for column in self.done.values() for r in column.values()]
        write_text_atomically(self.folder / "results.json", json.dumps({"results": items}, indent=2) + "\n")
        write_text_atomically(self.folder / "results.md", self.markdown())

    def markdown(self) -> str:
        columns = self.columns or list(self.done)
        tasks = list(dict.fromkeys(task for column in columns for task in self.done.get(column, {})))
        lines = ["# Fine-tuning results (validation files)", ""]
        if self.protocol:
            lines += [self.protocol, ""]
        lines += ["| task | metric | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
        for task in tasks:
            results = [self.get(column, task) for column in columns]
            names = next((list(r.metrics) for r in results if r is not None), [])
            metric = "/".join(METRIC_LABELS.get(name, name) for name in names)
            cells = ["/".join(f"{100 * r.metrics[name]:.1f}" for name in names) if r else "-" for r in results]
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
        averages = []
        for column in columns:
            scores = [self.get(column, task) for task in tasks]
            averages.append(f"{100 * sum(r.score for r in scores) / len(scores):.1f}"
                            if scores and all(scores) else "-")
        lines.append("| **average** | score | " + " | ".join(averages) + " |")
        return "\n".join(lines) + "\n"
