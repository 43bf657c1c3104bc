"""SequenceLengthWarmup: the schedule, the windows each module cuts rows into (every token and every target once),
and a run through Lightning that follows the schedule, counts its tokens and continues it on resume."""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_lm.callbacks import SequenceLengthWarmup, ThroughputMFU
from lit_lm.models import IGNORE_INDEX, TransformerConfig
from lit_lm.modules import CausalLMModule, MaskedLMModule
from tests.callbacks.helpers import LinearOnTokens, quiet_trainer

CONFIG = dict(vocab_size=60, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
              max_position_embeddings=16, dropout=0.0, attention_dropout=0.0)


def masked_lm(**config) -> MaskedLMModule:
    return MaskedLMModule(TransformerConfig(**{**CONFIG, **config}), special_token_ids=[0, 1, 2, 3, 4],
                          mask_token_id=4, mask_rate=0.3, seq_length=16)


def causal_lm() -> CausalLMModule:
    return CausalLMModule(TransformerConfig(**CONFIG, norm_placement="pre", final_norm=True), seq_length=16)


def rows(n: int = 4, length: int = 16, seed: int = 0) -> dict:
    """Packed-like rows: [CLS]=2 first, text ids >= 5, the last row ending in 5 padding tokens (id 0)."""
    ids = torch.randint(5, 60, (n, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    ids[-1, -5:], mask[-1, -5:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


class Recorder:
    """Keeps what each forward of a module's model got (a pre-hook: the model itself runs as it does)."""

    def __init__(self, module) -> None:
        self.calls = []
        module.model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, model, args, kwargs):
        self.calls.append({**dict(zip(("input_ids", "attention_mask", "labels"), args)), **kwargs})


def test_lengths_double_from_the_start_and_reach_the_full_length_at_the_warmup_fraction():
    stepped = SequenceLengthWarmup(start_length=16, warmup_fraction=0.6, mode="stepped")
    assert stepped.lengths(128) == [16, 32, 64, 128]
    assert [stepped.length_at(p, 128) for p in (0.0, 0.19, 0.2, 0.39, 0.4, 0.59, 0.6, 1.0)] == \
        [16, 16, 32, 32, 64, 64, 128, 128]  # an equal share of the warmup at each length
    linear = SequenceLengthWarmup(start_length=16, warmup_fraction=0.5, mode="linear")
    path = [linear.length_at(i / 1000, 128) for i in range(1001)]
    assert path == sorted(path) and set(path) == {16, 32, 64, 128}
    # the linear target 16 + 112 * progress / 0.5, rounded down to the lengths: 32 from 1/14 of the run on
    assert linear.length_at(0.071, 128) == 16 and linear.length_at(0.072, 128) == 32
    assert linear.length_at(0.499, 128) == 64 and linear.length_at(0.5, 128) == 128
    assert SequenceLengthWarmup(start_length=32, warmup_fraction=0.0).length_at(0.0, 128) == 128


@pytest.mark.parametrize("start", [48, 256, 0])
def test_a_start_length_that_does_not_cut_rows_into_whole_windows_is_refused(start):
    with pytest.raises(ValueError, match="start_length"):
        SequenceLengthWarmup(start_length=start).lengths(128)


def test_masked_lm_windows_hold_every_token_and_every_masked_target_once():
    module, batch = masked_lm(), rows()
    recorder = Recorder(module)
    torch.manual_seed(0)
    module.training_step(batch, 0)  # whole rows: the reference masks
    module.train_length = 4
    torch.manual_seed(0)
    module.training_step(batch, 0)  # the same draws, in windows of 4
    whole, windows = recorder.calls
    assert windows["input_ids"].shape == (16, 4) and whole["input_ids"].shape == (4, 16)
    assert torch.equal(windows["input_ids"].reshape(4, 16), whole["input_ids"])  # each token once, in order
    assert torch.equal(windows["labels"].reshape(4, 16), whole["labels"])  # each masked target once
    assert (whole["labels"] != IGNORE_INDEX).sum() > 10
    mask = windows["attention_mask"]
    assert torch.equal(mask[:-1].reshape(-1), batch["attention_mask"].reshape(-1)[:-4])
    assert mask[-1].all()  # the window of padding alone attends to itself: no empty attention row, no NaN
    assert torch.isfinite(module.model(windows["input_ids"], mask, windows["labels"]).loss)


def test_causal_lm_windows_keep_every_next_token_target_once():
    module, batch = causal_lm(), rows()
    recorder = Recorder(module)
    module.training_step(batch, 0)
    module.train_length = 4
    loss = module.training_step(batch, 0)
    whole, windows = recorder.calls

    def targets(call):  # (row, position in the row, target) for every prediction the loss counts
        ids, labels = call["input_ids"], call["labels"]
        length = ids.shape[1]
        shifted = labels[:, 1:] if labels.shape[1] == length + 1 else torch.nn.functional.pad(
            labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        per_row = 16 // length
        return sorted((r // per_row, (r % per_row) * length + t, int(shifted[r, t]))
                      for r in range(len(ids)) for t in range(length) if shifted[r, t] != IGNORE_INDEX)

    assert windows["input_ids"].shape == (16, 4) and windows["labels"].shape == (16, 5)
    assert torch.equal(windows["input_ids"].reshape(4, 16), whole["input_ids"])
    assert targets(windows) == targets(whole)  # none lost at a cut, none twice
    assert len(targets(whole)) == 4 * 15 - 5  # every next token of the row, none in the padding
    out = module.model(windows["input_ids"], windows["attention_mask"], windows["labels"])
    logits = torch.stack([out.logits[row * 4 + position // 4, position % 4] for row, position, _ in targets(windows)])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([t for _, _, t in targets(windows)]))
    torch.testing.assert_close(out.loss, expected)  # the model's loss is over exactly those targets
    assert torch.isfinite(loss)


class LengthsSeen(Callback):
    """The sequence length the model got at each optimizer step, and the tokens the batches held."""

    def __init__(self) -> None:
        self.lengths, self.tokens = {}, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lengths[trainer.global_step - 1] = pl_module.train_length or batch["input_ids"].shape[1]
        self.tokens += int(batch["attention_mask"].sum())


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def data(n: int = 16) -> torch.utils.data.DataLoader:
    batch = rows(n, seed=1)
    samples = [{k: v[i] for k, v in batch.items()} for i in range(n)]
    return torch.utils.data.DataLoader(samples, batch_size=2)


def fit(tmp_path, max_steps: int, stop: int | None = None, ckpt_path=None):
    seen, warmup = LengthsSeen(), SequenceLengthWarmup(start_length=4, warmup_fraction=0.5, mode="stepped",
                                                        key="steps")
    callbacks = [warmup, seen, ThroughputMFU(window=2, peak_flops=1e9)] + ([StopAt(stop)] if stop else [])
    trainer = quiet_trainer(tmp_path, max_steps=max_steps, callbacks=callbacks)
    module = masked_lm()
    trainer.fit(module, train_dataloaders=data(), ckpt_path=ckpt_path, weights_only=False)  # our own file
    return trainer, seen, module


def test_a_run_follows_the_schedule_counts_every_token_and_continues_it_on_resume(tmp_path):
    stopped, first, module = fit(tmp_path / "a", max_steps=8, stop=3)
    # windows of 4, then 8, then whole rows of 16, each for a sixth of the run (a third of the warmup)
    assert first.lengths == {0: 4, 1: 4, 2: 8}
    assert stopped.callback_metrics["train/seq_length"] == 8 and module.train_length is None  # reset at the end
    throughput = next(c for c in stopped.callbacks if isinstance(c, ThroughputMFU))
    assert throughput.tokens_seen == first.tokens == 6 * 16  # the batches' real tokens, once each
    stopped.save_checkpoint(tmp_path / "a" / "step3.ckpt")
    resumed, second, _ = fit(tmp_path / "b", max_steps=8, ckpt_path=tmp_path / "a" / "step3.ckpt")
    assert second.lengths == {3: 8, 4: 16, 5: 16, 6: 16, 7: 16}  # where the schedule was, not from its start
    assert resumed.callback_metrics["train/seq_length"] == 16
    throughput = next(c for c in resumed.callbacks if isinstance(c, ThroughputMFU))
    assert throughput.tokens_seen == first.tokens + second.tokens


class WholeRows(MaskedLMModule):
    """A module whose training step never asks for windows."""

    def training_step(self, batch, batch_idx):
        return self(batch["input_ids"], batch["attention_mask"], batch["input_ids"]).loss


def test_a_module_that_trains_whole_rows_anyway_is_refused_not_silently_unwarmed(tmp_path):
    module = WholeRows(TransformerConfig(**CONFIG), special_token_ids=[0, 1, 2, 3, 4], mask_token_id=4, seq_length=16)
    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=[SequenceLengthWarmup(start_length=4, key="steps")])
    with pytest.raises(ValueError, match="WholeRows.training_step trains whole rows"):
        trainer.fit(module, train_dataloaders=data())


# ---- the settings, the refusals with their fixes, and the hooks on fake trainers ----
@pytest.mark.parametrize("settings", [dict(start_length=1), dict(warmup_fraction=1.0), dict(warmup_fraction=0.0),
                                      dict(key="time"), dict(key="steps"), dict(mode="stepped")])
def test_settings_at_their_bounds_are_allowed(settings):
    SequenceLengthWarmup(**settings)


@pytest.mark.parametrize("settings, message", [
    (dict(warmup_fraction=1.5), r"SequenceLengthWarmup.warmup_fraction must be in \[0, 1\], got 1.5"),
    (dict(mode="cosine"), r"SequenceLengthWarmup.mode must be 'linear' or 'stepped', got 'cosine'"),
    (dict(key="epochs"), r"SequenceLengthWarmup.key must be 'auto', 'steps' or 'time', got 'epochs'"),
])
def test_settings_out_of_range_are_refused_naming_them(settings, message):
    with pytest.raises(ValueError, match=message):
        SequenceLengthWarmup(**settings)


def test_the_start_length_may_be_the_full_length():
    assert SequenceLengthWarmup(start_length=128).lengths(128) == [128]
    assert SequenceLengthWarmup(start_length=1).lengths(4) == [1, 2, 4]


@pytest.mark.parametrize("start, full, options", [(48, 128, "64, 32, 16, 8"), (32, 96, "48, 24, 12, 6"),
                                                  (5, 48, "24, 12, 6, 3"), (2, 7, "7")])
def test_a_start_length_that_does_not_divide_the_rows_is_refused_with_lengths_that_would(start, full, options):
    """The suggestions are the full length halved 1 to 4 times, while it halves evenly (the full length itself
    when it is odd). 96 / 32 = 3 is no power of two."""
    with pytest.raises(ValueError, match=rf"^SequenceLengthWarmup.start_length \({start}\) must be data.seq_length "
                                         rf"\({full}\) divided by a power of two, so that every row cuts into whole "
                                         rf"windows; e.g. {options}\.$"):
        SequenceLengthWarmup(start_length=start).lengths(full)


def test_a_start_length_that_cannot_divide_the_modules_rows_is_refused_before_training():
    module = masked_lm()  # seq_length 16
    limited = SimpleNamespace(global_step=0, max_steps=8, max_epochs=None, num_training_batches=float("inf"),
                              fit_loop=SimpleNamespace(total_batch_idx=0), callbacks=[], world_size=1)
    with pytest.raises(ValueError, match=r"start_length \(3\) must be data.seq_length \(16\)"):
        SequenceLengthWarmup(start_length=3).on_train_start(limited, module)
    # a module without hparams (not a LightningModule's) is checked at its first batch instead
    SequenceLengthWarmup(start_length=3).on_train_start(limited, SimpleNamespace(train_windows=None))


def test_a_module_that_cannot_cut_rows_or_a_run_without_a_limit_is_refused_naming_what_is_missing():
    limited = SimpleNamespace(global_step=0, max_steps=8, max_epochs=None, num_training_batches=float("inf"),
                              fit_loop=SimpleNamespace(total_batch_idx=0), callbacks=[], world_size=1)
    with pytest.raises(ValueError, match=r"SequenceLengthWarmup needs a lit-lm pretraining module \(MaskedLMModule, "
                                         r"CausalLMModule, ReplacedTokenDetectionModule\), got LinearOnTokens"):
        SequenceLengthWarmup().on_train_start(limited, LinearOnTokens())
    unlimited = SimpleNamespace(**{**vars(limited), "max_steps": -1})
    with pytest.raises(ValueError, match=r"SequenceLengthWarmup \(key='auto'\) needs a budget"):
        SequenceLengthWarmup(start_length=4).on_train_start(unlimited, masked_lm())


def test_the_length_is_taken_once_per_optimizer_step_and_whole_rows_train_uncut():
    """With 2 micro-batches a step, the second micro-batch keeps the first's length even where progress moved on
    (a time budget moves within a step)."""
    warmup = SequenceLengthWarmup(start_length=4, warmup_fraction=0.5, mode="stepped", key="steps")
    logged = []
    module = SimpleNamespace(train_length=None, windows_taken=True, log=lambda name, value: logged.append(value))

    def trainer(step):
        return SimpleNamespace(global_step=step, max_steps=8, max_epochs=None, num_training_batches=float("inf"),
                               fit_loop=SimpleNamespace(total_batch_idx=0), callbacks=[], world_size=1,
                               accumulate_grad_batches=2)

    batch = rows()  # rows of 16: windows of 4, 8, then 16
    warmup.on_train_batch_start(trainer(0), module, batch, 0)
    assert (module.train_length, module.windows_taken) == (4, False)
    warmup.on_train_batch_start(trainer(2), module, batch, 1)  # inside the window: progress moved, the length not
    assert module.train_length == 4 and logged == [4.0]
    warmup.on_train_batch_start(trainer(2), module, batch, 2)  # the next window: 2/8 of the run, windows of 8
    assert module.train_length == 8
    warmup.on_train_batch_start(trainer(4), module, batch, 4)  # half the run: whole rows, nothing to cut
    assert module.train_length is None and logged == [4.0, 8.0, 16.0]


def test_whole_rows_from_the_start_need_no_windows(tmp_path):
    """warmup_fraction 0: whole rows from the first step, so a module that never cuts rows is fine."""
    module = WholeRows(TransformerConfig(**CONFIG), special_token_ids=[0, 1, 2, 3, 4], mask_token_id=4, seq_length=16)
    trainer = quiet_trainer(tmp_path, max_steps=2,
                            callbacks=[SequenceLengthWarmup(start_length=4, warmup_fraction=0.0, key="steps")])
    trainer.fit(module, train_dataloaders=data())
    assert trainer.global_step == 2 and trainer.callback_metrics["train/seq_length"] == 16


def test_the_default_start_is_32_tokens():
    """The docstring's example: rows of 128 go through windows of 32, 64, then whole rows."""
    assert SequenceLengthWarmup().lengths(128) == [32, 64, 128]
