"""Token dropping (Hou et al. 2022): the middle blocks see only the kept tokens, masked and special tokens are always
kept, the importance follows the masked-LM loss, evaluation sees every token; and the quickstart trains with it."""

import pytest
import torch

from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM, IGNORE_INDEX
from lit_lm.models.layers.token_dropping import TokenImportance, token_dropping_layers
from lit_lm.modules import MaskedLMModule
from tests.models.helpers import tiny

SPECIAL = [0, 1, 2, 3, 4]  # pad, unk, [CLS], [SEP], [MASK]


def module(**config) -> MaskedLMModule:
    return MaskedLMModule(tiny(num_layers=4, token_dropping_keep=0.5, **config), special_token_ids=SPECIAL,
                          mask_token_id=4, mask_rate=0.2, seq_length=16)


def rows(n: int = 4, seed: int = 0) -> dict:
    ids = torch.randint(5, 50, (n, 16), generator=torch.Generator().manual_seed(seed))
    ids[:, 0], ids[:, 9] = 2, 3  # [CLS] first, a [SEP] inside
    mask = torch.ones_like(ids)
    ids[-1, -3:], mask[-1, -3:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def block_widths(model: EncoderForMaskedLM) -> list[list[int]]:
    """For every forward from now on: the tokens each block got."""
    widths = []

    def record(block, args):
        if block is model.encoder.blocks[0]:
            widths.append([])
        widths[-1].append(args[0].shape[1])

    for block in model.encoder.blocks:
        block.register_forward_pre_hook(record)
    return widths


@pytest.mark.parametrize("settings, message", [
    (dict(token_dropping_keep=0.0), "token_dropping_keep must be in"),
    (dict(token_dropping_keep=0.5, num_layers=1), "num_layers >= 2"),
    (dict(token_dropping_keep=0.5, token_dropping_start=2, token_dropping_end=2), "start < end"),
    (dict(token_dropping_keep=0.5, position_embedding="none", relative_positions="rotary"), "relative_positions"),
    (dict(token_dropping_keep=0.5, token_mixer="fourier"), "token_mixer"),
])
def test_settings_token_dropping_cannot_use_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        tiny(**settings)


def test_decoders_refuse_token_dropping():
    with pytest.raises(ValueError, match="a decoder cannot use token_dropping_keep"):
        DecoderForCausalLM(tiny(num_layers=4, token_dropping_keep=0.5))


def test_token_dropping_is_a_training_switch_for_the_huggingface_export():
    from lit_lm.hf.expressible import not_expressible

    assert not_expressible("bert", tiny(num_layers=4, token_dropping_keep=0.5, token_dropping_start=1)) == []


def test_the_default_split_is_the_papers_upper_middle():
    assert token_dropping_layers(tiny(num_layers=12, token_dropping_keep=0.5)) == (5, 11)  # blocks 6-11 of 12
    assert token_dropping_layers(tiny(num_layers=4, token_dropping_keep=0.5)) == (1, 3)


def test_masked_and_special_tokens_are_always_kept_padding_never_then_the_hardest_ids():
    importance = TokenImportance(50)
    importance.loss.fill_(1.0)
    importance.loss[40:] = 5.0  # ids 40-49 are the hard ones
    ids = torch.tensor([[2, 10, 41, 11, 12, 42, 13, 14, 3, 15, 16, 43, 0, 0, 0, 0]])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 6] = 13  # a masked position whose id is easy
    keep = importance.keep(ids, labels, torch.tensor(SPECIAL), pad_token_id=0, fraction=0.5)[0].tolist()
    assert {0, 2, 5, 6, 8, 11} <= set(keep) and len(keep) == 8 and keep == sorted(keep)  # 2 easy ones besides
    assert not set(keep) & {12, 13, 14, 15}  # padding goes first
    # a row whose masked tokens alone exceed the fraction keeps them all
    labels[0, 1:8] = ids[0, 1:8]
    assert len(importance.keep(ids, labels, torch.tensor(SPECIAL), 0, fraction=0.25)[0]) == 9


def test_middle_blocks_see_only_the_kept_tokens_and_the_dropped_skip_them():
    lm = module()
    batch = rows()
    widths = block_widths(lm.model)
    inputs_of_block_3, outputs_of_block_0 = [], []
    lm.model.encoder.blocks[3].register_forward_pre_hook(lambda b, args: inputs_of_block_3.append(args[0]))
    lm.model.encoder.blocks[0].register_forward_hook(lambda b, args, out: outputs_of_block_0.append(out.hidden))
    torch.manual_seed(0)
    inputs, labels = lm._mask(batch["input_ids"])
    keep = lm.kept_tokens(inputs, labels)  # what the step keeps: the same masks, the importance before the step
    torch.manual_seed(0)
    lm.training_step(batch, 0)
    assert widths == [[16, 8, 8, 16]]  # blocks 1 and 2 on half of each row
    assert (labels != IGNORE_INDEX).sum() > 0 and all(set(row.nonzero().squeeze(1).tolist()) <= set(kept.tolist())
                                                       for row, kept in zip(labels != IGNORE_INDEX, keep))
    dropped = torch.ones(4, 16, dtype=torch.bool).scatter(1, keep, False)
    # a dropped token enters block 3 as it left block 0; a kept one has been through blocks 1 and 2
    assert torch.equal(inputs_of_block_3[0][dropped], outputs_of_block_0[0][dropped])
    assert not torch.allclose(inputs_of_block_3[0][~dropped], outputs_of_block_0[0][~dropped])


def test_importance_follows_the_loss_and_evaluation_sees_every_token():
    lm = module()
    widths = block_widths(lm.model)
    before = lm.token_importance.loss.clone()
    torch.manual_seed(0)
    lm.training_step(rows(), 0)
    changed = (lm.token_importance.loss != before).nonzero().squeeze(1)
    inputs, labels = (torch.manual_seed(0), lm._mask(rows()["input_ids"]))[1]
    assert set(changed.tolist()) == set(labels[labels != IGNORE_INDEX].tolist())  # the masked ids, only those
    assert "token_importance.loss" in lm.state_dict() and "token_importance.loss" not in {
        "token_importance." + k for k in lm.model.state_dict()}  # in the checkpoint, not in exports
    assert TokenImportance(50).to(torch.bfloat16).loss.dtype == torch.float32  # bf16-true would freeze the average
    lm.eval()
    with torch.no_grad():
        lm.validation_step(rows(), 0)
    assert widths[-1] == [16, 16, 16, 16]
    flops = lm.training_flops(rows())
    lm.token_importance = None  # the same model without token dropping
    assert flops < lm.training_flops(rows())  # MFU counts the FLOPs token dropping does


@pytest.mark.slow
def test_the_quickstart_trains_with_token_dropping_and_a_sequence_length_warmup(corpus, tmp_path, monkeypatch):
    """Both training tricks of docs/training.md, one line each, through train.py: the loss falls and the length
    grows from 8 to the rows' 32."""
    import csv
    import sys

    from lit_lm.cli import main
    from tests.conftest import ROOT
    from tests.test_recipes import TINY

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    cli = main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY,
                "--model.init_args.config.num_layers", "3", "--model.init_args.config.token_dropping_keep", "0.5",
                "--trainer.callbacks+=lit_lm.callbacks.SequenceLengthWarmup",
                "--trainer.callbacks.init_args.start_length=8", "--trainer.callbacks.init_args.warmup_fraction=0.5",
                "--data.init_args.paths", f"[{corpus}]", "--trainer.max_steps", "20", "--trainer.max_time", "null",
                "--trainer.precision", "32-true", "--trainer.val_check_interval", "20"])
    summary = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "LossSummary").summary()
    assert summary["steps"] == 20 and summary["last_tenth"] < summary["first_tenth"] - 0.3, summary
    with open(next((tmp_path / "runs" / "quickstart").rglob("metrics.csv"))) as f:
        lengths = [float(row["train/seq_length"]) for row in csv.DictReader(f) if row.get("train/seq_length")]
    assert lengths == sorted(lengths) and lengths[0] == 8 and lengths[-1] == 32 and 16 in lengths
