"""Attention diagnostics during training: a fixed probe text's attention maps and column scores, every N steps."""

from io import BytesIO
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from lit_lm.callbacks.sharding import refuse_sharded_weights
from lit_lm.diagnostics.attention import column_scores, figure_png, plot_attention, probe_attention

DEFAULT_PROBE = ("The interpreter reads the file, compiles it to bytecode and runs it. "
                 "Errors are reported with a traceback.")


class AttentionDiagnostics(Callback):
    """Every ``every_n_steps`` optimizer steps (not at step 0) and at the end of training, runs ``text`` through the
    model and logs what its attention heads look at (lit_lm.diagnostics.attention).

    Logged at the optimizer step: ``attention/column_score/layer_<i>``, the share of block i's heads that are column
    heads (their attention sits on one key position whatever the query: the mean over queries of a head's share on
    its most attended key is >= ``threshold``), and ``attention/column_score``, the mean over layers; with
    ``leading_space``, the same for ``" " + text`` under ``attention/column_score_spaced``. Every logger gets the
    scores (metrics.csv with the CSV logger). Heatmaps of every head: one image per layer under ``attention/maps``
    (``attention/maps_spaced``) on a wandb dashboard, and one PNG of all layers,
    ``<log_dir>/attention/step_<N>[_spaced].png``, for loggers with a run folder (CSV, TensorBoard).

    The tokenizer is the datamodule's. The probe runs on rank zero only, in eval mode without gradients, in a forked
    random state, and the model goes back to training mode: training is exactly what it would be without the callback.
    Models without attention weights (token_mixer: fourier) are reported once and skipped.

    Args:
        every_n_steps: Optimizer steps between probes.
        text: The probe text, run as one sequence with the tokenizer's special tokens (cut to the model's longest
            input if its position table is shorter).
        leading_space: Also probe the text with a leading space, as RoBERTa-style byte-level tokenizers see words
            inside a document: a model that collapses onto one position without it shows the leading-space flaw.
        threshold: The column value (in (0, 1]) from which a head counts as a column head.
    """

    def __init__(self, every_n_steps: int = 500, text: str = DEFAULT_PROBE, leading_space: bool = False,
                 threshold: float = 0.5) -> None:
        if every_n_steps < 1 or not text.strip() or not 0 < threshold <= 1:
            raise ValueError(f"AttentionDiagnostics: every_n_steps must be >= 1 (got {every_n_steps}), text must not "
                             f"be empty (got {text!r}) and threshold must be in (0, 1] (got {threshold}).")
        self.every_n_steps, self.text, self.leading_space = every_n_steps, text, leading_space
        self.threshold = threshold
        self._last_step = -1
        self._warned = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        refuse_sharded_weights(trainer, "AttentionDiagnostics")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(trainer.datamodule, "tokenizer", None) is None:
            raise ValueError("AttentionDiagnostics needs a datamodule with a tokenizer "
                             "(lit_lm.data.PretrainingDataModule).")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step != self._last_step and step > 0 and step % self.every_n_steps == 0:
            self.probe(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > 0 and trainer.global_step != self._last_step:
            self.probe(trainer, pl_module)

    @rank_zero_only
    def probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Probes the model now and logs the scores and heatmaps at the current optimizer step."""
        self._last_step = step = trainer.global_step
        tokenizer = trainer.datamodule.tokenizer
        metrics, images = {}, []
        for suffix, spaced in [("", False)] + ([("_spaced", True)] if self.leading_space else []):
            tokens, maps, layers, skipped = probe_attention(pl_module.model, tokenizer, self.text, leading_space=spaced)
            if not layers:
                if not self._warned:
                    rank_zero_warn(f"AttentionDiagnostics: blocks {skipped} have no attention weights (their token "
                                   "mixer computes none); nothing to log.")
                    self._warned = True
                return
            scores = column_scores(maps, self.threshold)
            metrics.update({f"attention/column_score{suffix}/layer_{i}": float(score)
                            for i, score in zip(layers, scores.per_layer)})
            metrics[f"attention/column_score{suffix}"] = float(scores.per_layer.mean())
            title = f"step {step}" + (", leading space" if spaced else "")
            images.append((suffix, title, tokens, maps, layers, scores.per_layer))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()
        self._log_images(trainer, images, step)

    @staticmethod
    def _log_images(trainer: L.Trainer, images: list, step: int) -> None:
        """Per-layer heatmaps to wandb loggers, one PNG of all layers into each other logger's run folder."""
        written: set[Path] = set()
        for logger in trainer.loggers:
            for suffix, title, tokens, maps, layers, per_layer in images:
                if isinstance(logger, WandbLogger):
                    from PIL import Image

                    pngs = [figure_png(plot_attention(maps[j : j + 1], tokens, [i], title=title))
                            for j, i in enumerate(layers)]
                    logger.log_image(key=f"attention/maps{suffix}", images=[Image.open(BytesIO(png)) for png in pngs],
                                     step=step, caption=[f"layer {i}: column score {float(score):.2f}"
                                                         for i, score in zip(layers, per_layer)])
                elif getattr(logger, "log_dir", None):
                    path = Path(logger.log_dir) / "attention" / f"step_{step}{suffix}.png"
                    if path not in written:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        plot_attention(maps, tokens, layers, title=title).savefig(path, dpi=100)
                        written.add(path)
