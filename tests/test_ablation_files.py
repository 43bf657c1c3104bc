"""The ablation lists in configs/ablations/: each names a base recipe and variants whose words train.py accepts,
and each word sets what it says in the resolved config."""

import functools
from pathlib import Path

import pytest
import torch
import yaml

from lit_lm.ablate.spec import read_ablation
from lit_lm.checkpoint import config_from_dict
from lit_lm.cli import resolved_config
from lit_lm.models import EncoderForMaskedLM
from tests.conftest import ROOT

FILES = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))
ABLATIONS = {path: read_ablation(path) for path in FILES}  # each file parsed once
CASES = [(path, variant) for path in FILES for variant in ABLATIONS[path].variants if variant.words]


@functools.cache
def resolved(recipe: Path, *words: str) -> dict:
    """``resolved_config`` (what the ablation runner reads) once per recipe and words in this process: the cramming
    test below reads variants that the parametrized test resolved already."""
    return resolved_config(recipe, *words)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_an_ablation_file_names_a_base_recipe_and_says_what_it_checks(path):
    text = path.read_text()
    assert text.startswith("# ") and "Checks:" in text and f"python -m lit_lm.ablate {path.relative_to(ROOT)}" in text
    ablation = ABLATIONS[path]
    assert ablation.base.is_file() and ablation.seeds >= 1
    names = [v.name for v in ablation.variants]
    assert names and len(set(names)) == len(names) and len(names) == len(yaml.safe_load(text)["variants"])
    assert not ablation.reference.words and ablation.reference.recipe == ablation.base  # the base recipe itself


def setting(config: dict, keys: str) -> object:
    """The value at a dotted path of a resolved config; ``trainer.callbacks.Name.arg`` finds the callback by class."""
    node = config
    parts = keys.split(".")
    for i, key in enumerate(parts):
        if isinstance(node, list):  # the callbacks list: the next key is a class name
            node = next(c for c in node if c["class_path"].endswith("." + key))["init_args"]
            continue
        node = node[key]
    return node


@pytest.mark.parametrize("path,variant", CASES, ids=[f"{p.stem}:{v.name}" for p, v in CASES])
def test_every_variant_parses_and_sets_what_it_says(path, variant):
    config = resolved(variant.recipe, *variant.words)
    for word in variant.words:
        keys, value = word.removeprefix("--").split("=", 1)
        if keys.endswith("+"):  # appended to a list (a callback): an entry with these settings is in it
            added = yaml.safe_load(value)
            added = added if isinstance(added, dict) else {"class_path": added}
            assert any(entry["class_path"] == added["class_path"]
                       and added.get("init_args", {}).items() <= entry.get("init_args", {}).items()
                       for entry in setting(config, keys[:-1])), word
            continue
        assert setting(config, keys) == yaml.safe_load(value), f"{word}: resolved to {setting(config, keys)!r}"
    if config["model"]["class_path"].endswith("MaskedLMModule"):  # and the model builds (the config checks pass):
        with torch.device("meta"):  # every module's constructor and check runs; no memory for the recipe-size weights
            EncoderForMaskedLM(config_from_dict(config["model"]["init_args"]["config"]))


def test_the_cramming_ablation_has_its_peers_and_takes_out_the_callback_tricks():
    ablation = ABLATIONS[ROOT / "configs" / "ablations" / "cramming.yaml"]
    by_name = {v.name: v for v in ablation.variants}
    assert by_name["original"].recipe.name == "original-bert.yaml" and by_name["hf-trainer"].peer == "hf-trainer"
    ramp = resolved(ablation.base, *by_name["-batch-ramp"].words)
    assert setting(ramp, "trainer.callbacks.BatchSizeRamp.ramp_fraction") == 0  # the target batch from step one
    schedule = resolved(ablation.base, *by_name["-one-cycle"].words)
    assert setting(schedule, "trainer.callbacks.OneCycleLR.warmup_fraction") == 0.01
    assert setting(schedule, "trainer.callbacks.OneCycleLR.initial_lr_ratio") == 0
