"""A recipe's callback named by its class on the command line: one word changes or removes it wherever it sits."""

import pytest

from lit_lm.cli import resolved_config
from lit_lm.recipe_bases import RecipeError, edit_callbacks
from tests.conftest import ROOT

CRAMMED = ROOT / "configs" / "recipes" / "crammed-bert.yaml"


def classes(config: dict) -> list[str]:
    return [c["class_path"].rsplit(".", 1)[-1] for c in config["trainer"]["callbacks"]]


def test_a_word_sets_one_argument_of_the_callback_it_names_and_nothing_else():
    before = resolved_config(CRAMMED)
    after = resolved_config(CRAMMED, "--trainer.callbacks.OneCycleLR.warmup_fraction=0.01",
                            "--trainer.callbacks.BatchSizeRamp.ramp_fraction=0")
    assert classes(after) == classes(before)  # same callbacks, same order
    changed = {(b["class_path"], k) for b, a in zip(before["trainer"]["callbacks"], after["trainer"]["callbacks"])
               for k in b.get("init_args") or {} if b["init_args"][k] != a["init_args"][k]}
    assert changed == {("lit_lm.callbacks.OneCycleLR", "warmup_fraction"),
                       ("lit_lm.callbacks.BatchSizeRamp", "ramp_fraction")}
    assert {k: v for k, v in after.items() if k != "trainer"} == {k: v for k, v in before.items() if k != "trainer"}


def test_null_takes_a_callback_out_and_later_appends_still_apply():
    config = resolved_config(CRAMMED, "--trainer.callbacks.BatchSizeRamp=null",
                             "--trainer.callbacks+=lit_lm.callbacks.HeldOutLoss",
                             "--trainer.callbacks.init_args.path=heldout.pt")
    names = classes(config)
    assert "BatchSizeRamp" not in names and names.count("HeldOutLoss") == 1 and names[-1] == "HeldOutLoss"
    assert config["trainer"]["callbacks"][-1]["init_args"]["path"] == "heldout.pt"


def test_a_callback_the_run_lacks_or_a_value_that_is_not_null_is_one_clear_error():
    with pytest.raises(RecipeError, match="no Missing callback .*BatchSizeRamp"):
        resolved_config(CRAMMED, "--trainer.callbacks.Missing.x=1")
    with pytest.raises(RecipeError, match="give `=null` to take the callback out"):
        edit_callbacks([{"class_path": "a.B"}], "B", None, "1")


@pytest.mark.slow
def test_the_edited_run_trains(corpus, tmp_path, monkeypatch):
    import sys

    from lit_lm.cli import main
    from tests.test_recipes import TINY

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    cli = main(["fit", "--config", str(CRAMMED), *TINY, "--data.init_args.paths", f"[{corpus}]",
                "--trainer.max_steps=3", "--trainer.callbacks.BatchSizeRamp.ramp_fraction=0",
                "--trainer.callbacks.BatchSizeRamp.target_batch_size=8",
                "--trainer.callbacks.LossSummary=null"])
    ramp = next(c for c in cli.trainer.callbacks if type(c).__name__ == "BatchSizeRamp")
    assert ramp.ramp_fraction == 0 and cli.trainer.global_step == 3
    assert cli.trainer.accumulate_grad_batches == 8 // 4  # the target batch from the first step
    assert not any(type(c).__name__ == "LossSummary" for c in cli.trainer.callbacks)


def test_a_recipe_written_for_one_base_logger_is_told_what_to_change(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(f"base: {ROOT / 'configs' / 'base' / 'trainer.yaml'}\n"
                   "trainer:\n  default_root_dir: &run runs/x\n  logger: {init_args: {save_dir: *run}}\n")
    with pytest.raises(RecipeError, match="delete the recipe's `logger:` line and set `default_root_dir`"):
        resolved_config(old)
