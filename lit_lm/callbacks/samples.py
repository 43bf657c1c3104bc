"""Text samples from a causal LM during training, on the experiment dashboard."""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lit_lm.callbacks.sharding import refuse_sharded_weights
from lit_lm.generate import generate_text


class TextSamples(Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end of training), continues each prompt and logs the text.

    With a ``WandbLogger``: a ``samples`` table (step, prompt, text) on the dashboard. Otherwise the samples are
    appended to ``samples.txt`` in the logger's run folder (the CSV/TensorBoard version folder) and printed to the
    log. The tokenizer is the datamodule's. Sampling uses its own seeded generator: the training stream's random
    state is untouched.

    Args:
        every_n_steps: Optimizer steps between samples.
        prompts: Texts to continue; '' starts a new document.
        max_new_tokens: Tokens generated per sample.
        temperature: 0 is greedy; otherwise sampling at this temperature.
        top_k: Sample among the k most likely tokens only (None: all).
        top_p: Sample from the smallest set of tokens whose probability reaches top_p (None: all).
        seed: Seed of the sampling generator (the same at every logging step, so samples are comparable).
    """

    def __init__(self, every_n_steps: int = 200, prompts: list[str] | None = None, max_new_tokens: int = 32,
                 temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None, seed: int = 0) -> None:
        if every_n_steps < 1 or max_new_tokens < 1:
            raise ValueError("TextSamples: every_n_steps and max_new_tokens must be at least 1.")
        self.every_n_steps, self.max_new_tokens = every_n_steps, max_new_tokens
        self.prompts = list(prompts) if prompts is not None else [""]
        self.settings = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.seed = seed
        self.rows: list[list] = []  # every sample so far: [step, prompt, text]
        self._last_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        refuse_sharded_weights(trainer, "TextSamples")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step != self._last_step and step % self.every_n_steps == 0 and step > 0:
            self.log_samples(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.log_samples(trainer, pl_module)

    @rank_zero_only
    def log_samples(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("TextSamples needs a datamodule with a tokenizer (lit_lm.data.PretrainingDataModule).")
        device = next(pl_module.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        eos_token_id = pl_module.hparams.get("eos_token_id")  # None: the tokenizer's end-of-text token
        new = [[trainer.global_step, prompt, generate_text(pl_module.model, tokenizer, prompt, self.max_new_tokens,
                                                           eos_token_id=eos_token_id, generator=generator,
                                                           **self.settings)]
               for prompt in self.prompts]
        self.rows += new
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text(key="samples", columns=["step", "prompt", "text"], data=self.rows,
                                step=trainer.global_step)
            elif getattr(logger, "log_dir", None):
                path = Path(logger.log_dir) / "samples.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as f:
                    f.writelines(f"--- step {step} | prompt {prompt!r}\n{text}\n" for step, prompt, text in new)
        for step, prompt, text in new:
            rank_zero_info(f"sample at step {step} ({prompt!r}): {text!r}")
