"""The ablation lists in configs/ablations/: each names a base recipe and variants whose words train.py accepts,
and each word sets what it says in the resolved config."""

from pathlib import Path

import pytest
import yaml

from lit_lm.checkpoint import config_from_dict
from lit_lm.cli import resolved_config
from lit_lm.models import EncoderForMaskedLM
from tests.conftest import ROOT

FILES = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))


def variants_of(path: Path) -> list[tuple[str, list[str]]]:
    return list(yaml.safe_load(path.read_text())["variants"].items())


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_an_ablation_file_names_a_base_recipe_and_says_what_it_checks(path):
    content = yaml.safe_load(path.read_text())
    assert path.read_text().startswith("# ") and "Checks:" in path.read_text()
    assert (path.parent / content["base"]).is_file() and int(content.get("seeds", 1)) >= 1
    names = [name for name, _ in variants_of(path)]
    assert names and len(set(names)) == len(names)
    assert all(isinstance(words, list) for _, words in variants_of(path))


@pytest.mark.parametrize("path,name,words", [(p, n, w) for p in FILES for n, w in variants_of(p) if w],
                         ids=[f"{p.stem}:{n}" for p in FILES for n, w in variants_of(p) if w])
def test_every_variant_parses_and_sets_what_it_says(path, name, words):
    base = path.parent / yaml.safe_load(path.read_text())["base"]
    config = resolved_config(base, *words)
    for word in words:
        keys, value = word.removeprefix("--").split("=", 1)
        node = config
        for key in keys.split("."):
            node = node[key]
        assert node == yaml.safe_load(value), f"{word}: resolved to {node!r}"
    if config["model"]["class_path"].endswith("MaskedLMModule"):  # and the model builds (the config checks pass)
        EncoderForMaskedLM(config_from_dict(config["model"]["init_args"]["config"]))
