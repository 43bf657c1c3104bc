"""The one table of what each HuggingFace class expresses: a whitelist, so a new value or switch is refused."""

from dataclasses import dataclass, fields

import pytest

from lit_lm.hf.expressible import TABLE, not_expressible
from lit_lm.hf.families import family_for
from lit_lm.models import TransformerConfig

GPT2 = dict(type_vocab_size=0, norm_placement="pre", final_norm=True, embedding_norm=False, head_transform=False,
            activation="gelu_tanh", norm_eps=1e-5)
# a config each family expresses exactly
EXPRESSED = {
    "bert": {},
    "roberta": dict(pad_token_id=1, position_offset=2, type_vocab_size=0),
    "deberta-v2": dict(relative_positions="disentangled", position_embedding="none", position_buckets=8),
    "gpt2": GPT2,
}


def config(family: str, **changes) -> TransformerConfig:
    made = TransformerConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                             max_position_embeddings=64, **EXPRESSED[family])
    for name, value in changes.items():  # set after construction: values the config's own checks do not know
        setattr(made, name, value)
    return made


def test_every_family_has_a_row_and_expresses_its_own_kind_of_config():
    assert set(TABLE) == set(EXPRESSED)
    for family in EXPRESSED:
        assert not_expressible(family, config(family)) == []


@pytest.mark.parametrize("family", EXPRESSED)
@pytest.mark.parametrize("field, value", [("norm", "toy_norm"), ("relative_positions", "toy_scheme"),
                                          ("position_embedding", "toy_absolute"), ("activation", "toy_act")])
def test_a_value_the_table_does_not_list_is_not_expressible_by_any_family(family, field, value):
    problems = not_expressible(family, config(family, **{field: value}))
    assert problems and problems[0].startswith(f"{field}: {value}, needs ")


@dataclass
class WithToySwitch(TransformerConfig):
    toy_switch: bool = False
    """A switch added after the table was written."""


@pytest.mark.parametrize("family", EXPRESSED)
def test_a_new_config_field_is_expressible_only_at_its_default(family):
    on = WithToySwitch(**{f.name: getattr(config(family), f.name) for f in fields(TransformerConfig)}, toy_switch=True)
    assert not_expressible(family, on) == ["toy_switch: True, needs False"]
    on.toy_switch = False
    assert not_expressible(family, on) == []


def test_messages_name_the_setting_the_value_and_what_the_class_needs():
    problems = not_expressible("bert", config("bert", norm="rmsnorm", qkv_conv_kernel_size=3, head_activation="relu"))
    assert problems == ["norm: rmsnorm, needs layernorm", "qkv_conv_kernel_size: 3 (Primer), needs 0",
                        "head_activation: relu, needs gelu"]
    assert not_expressible("roberta", config("roberta", position_offset=0)) == ["position_offset: 0, needs 2"]


def test_family_for_is_the_first_family_whose_row_accepts_the_config():
    assert family_for(config("bert")).name == "bert"
    assert family_for(config("roberta")).name == "roberta"
    assert family_for(config("deberta-v2")).name == "deberta-v2"
    assert family_for(config("bert", conv_kernel_size=3)).name == "deberta-v2"  # nGiE: DeBERTa only
    assert family_for(config("deberta-v2", relative_positions="toy_scheme")) is None  # then: custom code
