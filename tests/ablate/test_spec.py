"""Ablation files: what the runner accepts, and one clear error for what it cannot run."""

import pytest

from lit_lm.ablate.spec import AblationFileError, read_ablation
from tests.conftest import ROOT

RECIPE = ROOT / "configs" / "recipes" / "crammed-bert.yaml"


def write(tmp_path, text: str):
    path = tmp_path / "ablation.yaml"
    path.write_text(f"# A test ablation. Checks: parsing.\nbase: {RECIPE}\n" + text)
    return path


def test_variants_are_words_or_mappings_and_the_reference_is_the_unchanged_base(tmp_path):
    ablation = read_ablation(write(tmp_path, (
        "seeds: 3\nvariants:\n  wide: [--model.init_args.config.hidden_size=512]\n  base: []\n"
        f"  other: {{base: {ROOT / 'configs/recipes/original-bert.yaml'}, change: the 2018 recipe}}\n"
        "  peer: {peer: hf-trainer}\n")))
    assert ablation.seeds == 3 and [v.name for v in ablation.variants] == ["wide", "base", "other", "peer"]
    assert ablation.reference.name == "base"  # not the first: the one that is the base recipe unchanged
    wide, _, other, peer = ablation.variants
    assert wide.words == ("--model.init_args.config.hidden_size=512",) and wide.description == "hidden_size=512"
    assert other.recipe.name == "original-bert.yaml" and other.description == "the 2018 recipe"
    assert peer.peer == "hf-trainer" and "Trainer" in peer.description


@pytest.mark.parametrize("text,message", [
    ("variants: {}\n", "must map each variant"),
    ("seeds: 0\nvariants: {a: []}\n", "seeds:. must be a whole number"),
    ("variants: {a: [hidden_size=3]}\n", "must be train.py options"),
    ("variants: {a: {peer: megatron}}\n", "unknown peer 'megatron'"),
    ("variants: {a: {peer: hf-trainer, words: [--x=1]}}\n", "a peer takes no words"),
    ("variants: {a: {base: missing.yaml}}\n", "base missing.yaml is not a file"),
    ("variants: {a: {wordz: []}}\n", "must be a list of train.py words, or a mapping"),
])
def test_what_cannot_run_is_one_clear_error(tmp_path, text, message):
    with pytest.raises(AblationFileError, match=message):
        read_ablation(write(tmp_path, text))


def test_a_missing_or_broken_file_says_so(tmp_path):
    with pytest.raises(AblationFileError, match="No such file"):
        read_ablation(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("base: [unclosed\n")
    with pytest.raises(AblationFileError, match="not valid YAML"):
        read_ablation(tmp_path / "bad.yaml")
    (tmp_path / "nobase.yaml").write_text("variants: {a: []}\n")
    with pytest.raises(AblationFileError, match="needs `base:"):
        read_ablation(tmp_path / "nobase.yaml")


def test_the_description_is_the_leading_comment_block_without_its_command_lines(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(f"# What it is,\n# and what it checks.\n#   python -m lit_lm.ablate a.yaml\n# not this\n"
                    f"base: {RECIPE}\nvariants: {{a: []}}\n")
    assert read_ablation(path).description == "What it is, and what it checks."
    path.write_text(f"# First.\n#\n# Later notes.\nbase: {RECIPE}\nvariants: {{a: []}}\n")
    assert read_ablation(path).description == "First."
