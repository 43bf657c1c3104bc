"""Checkpoints keep loading: every parameter and buffer keeps its name and shape.

``state_dict_keys.json`` was computed from the model code before the encoder and decoder became one ``Transformer``
(separate ``Encoder``/``Decoder`` classes): the names that saved checkpoints, the HuggingFace name maps
(lit_lm/hf) and the notebooks use. A renamed attribute, a moved module or a changed order fails here.
"""

import json
from pathlib import Path

import pytest

from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM
from tests.models.helpers import tiny

EXPECTED = json.loads((Path(__file__).parent / "state_dict_keys.json").read_text())
MODELS = {"encoder": EncoderForMaskedLM, "decoder": DecoderForCausalLM}


@pytest.mark.parametrize("name", EXPECTED)
def test_state_dict_names_shapes_and_order_are_unchanged(name):
    case = EXPECTED[name]
    model = MODELS[case["model"]](tiny(**case["config"]))
    actual = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert list(actual) == list(case["state_dict"])  # the same names in the same order
    assert actual == case["state_dict"]


def test_the_expected_lists_cover_every_kind_of_model():
    names = " ".join(EXPECTED)
    for kind in ("bert", "roberta", "deberta-v3-shared", "deberta-separate", "gpt2", "rotary", "t5", "moe",
                 "talking-heads", "primer"):
        assert kind in names
    assert {case["model"] for case in EXPECTED.values()} == {"encoder", "decoder"}
