"""Run ``train.py`` and kill it with SIGKILL at a named point: the test-side harness of tests/test_kill_anywhere.py.

    python tests/kill_points.py <point> <n> <rows_file> -- <train.py words>

On the ``n``-th time the run reaches ``point`` the process sends itself SIGKILL (no handler, no cleanup: what a
pre-empted machine or the OOM killer does). The points:

    step        inside a training step, after the forward pass, before backward and the optimizer step
    validation  inside a validation step
    checkpoint  while a checkpoint file is written: half of its bytes are on disk (inside ``torch.save``)
    dedup       during deduplication, after a chunk of documents was filtered and the signatures appended
    tokenizer   during tokenizer training, after a batch of its training texts was read
    shard       while the store's shards are written, after a block of rows (mid-shard)
    none        never: an uninterrupted run, recorded the same way

Every training micro-batch is appended to ``rows_file`` as one line ``<epoch> <batch_idx> <sha1 of each row>...``,
written through to the OS before the next batch starts, so the rows a killed run trained on survive the kill.
Product code is untouched: the points are patched here, around the functions the run calls.
"""

import functools
import hashlib
import io
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POINTS = ("step", "validation", "checkpoint", "dedup", "tokenizer", "shard", "none")


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class Countdown:
    """Kills the process on the ``n``-th call of ``tick``."""

    def __init__(self, n: int) -> None:
        self.calls, self.n = 0, n

    def tick(self) -> None:
        self.calls += 1
        if self.calls == self.n:
            die()


def row_digest(row) -> str:
    return hashlib.sha1(row.numpy().astype("int64").tobytes()).hexdigest()[:16]


def install(point: str, countdown: Countdown, rows_file: Path) -> None:
    import lightning as L
    import torch

    import lit_lm.cli
    from lit_lm.data import dedup, pipeline, store

    class RecordRows(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            line = " ".join([str(trainer.current_epoch), str(batch_idx), *map(row_digest, batch["input_ids"].cpu())])
            with open(rows_file, "a") as f:
                f.write(line + "\n")

    fit = lit_lm.cli.Trainer.fit

    @functools.wraps(fit)  # the CLI builds the `fit` subcommand's arguments (--ckpt_path) from this signature
    def fit_recording(self, model, *args, **kwargs):
        self.callbacks.append(RecordRows())
        name = {"step": "training_step", "validation": "validation_step"}.get(point)
        if name is not None:
            original = getattr(model, name)

            def killing_step(*a, **k):
                out = original(*a, **k)
                countdown.tick()
                return out

            setattr(model, name, killing_step)
        return fit(self, model, *args, **kwargs)

    lit_lm.cli.Trainer.fit = fit_recording

    if point == "checkpoint":
        save = torch.save

        def half_written_save(obj, f, *args, **kwargs):
            if countdown.calls + 1 < countdown.n:
                countdown.calls += 1
                return save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            target = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
            target.write(data[: len(data) // 2])
            target.flush()
            if hasattr(target, "fileno"):
                os.fsync(target.fileno())
            die()

        torch.save = half_written_save
    elif point == "dedup":
        filter_ = dedup.Deduplicator.filter

        def killing_filter(self, chunk):
            out = filter_(self, chunk)
            countdown.tick()
            return out

        dedup.Deduplicator.filter = killing_filter
    elif point == "tokenizer":
        train_tokenizer = pipeline.train_tokenizer

        def killing_train(texts, config):
            def counted():
                for batch in texts:
                    yield batch
                    countdown.tick()

            return train_tokenizer(counted(), config)

        pipeline.train_tokenizer = killing_train
    elif point == "shard":
        write = store.ShardWriter.write

        def killing_write(self, rows, lengths):
            write(self, rows, lengths)
            if len(rows):
                for f in self._files or ():
                    f.flush()
                countdown.tick()

        store.ShardWriter.write = killing_write


def main(argv: list[str]) -> None:
    point, n, rows_file, sep, *words = argv
    if point not in POINTS or sep != "--":
        raise SystemExit(f"usage: kill_points.py {{{'|'.join(POINTS)}}} N ROWS_FILE -- TRAIN.PY WORDS")
    sys.path.insert(0, str(ROOT))
    install(point, Countdown(int(n)), Path(rows_file))
    from lit_lm.cli import run

    sys.argv = [str(ROOT / "train.py"), *words]
    run()


if __name__ == "__main__":
    main(sys.argv[1:])
