"""A norm or an activation is one entry in its layer file plus the config field's Literal: the two agree."""

from typing import get_args

import pytest
import torch

from lit_lm.models.config import ActivationName, NormType, PlainActivationName
from lit_lm.models.layers.activations import GATED_ACTIVATIONS, PLAIN_ACTIVATIONS, Activation, activation_fn
from lit_lm.models.layers.norms import NORMS, build_norm
from tests.models.helpers import tiny


def test_the_config_literals_list_exactly_what_the_layer_files_define():
    assert set(get_args(NormType)) == set(NORMS)
    assert set(get_args(PlainActivationName)) == set(PLAIN_ACTIVATIONS)
    assert set(GATED_ACTIVATIONS) <= set(get_args(ActivationName)) <= set(PLAIN_ACTIVATIONS) | set(GATED_ACTIVATIONS)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_every_norm_normalises_the_hidden_size(norm):
    layer = build_norm(tiny(norm=norm))
    y = layer(torch.randn(2, 5, 32) * 7 + 3)
    assert y.shape == (2, 5, 32) and y.pow(2).mean(-1).sqrt().sub(1).abs().max() < 0.05


def test_unknown_names_are_refused_with_the_known_ones_listed():
    with pytest.raises(ValueError, match=r"unknown norm 'batchnorm'; choose one of "
                                         r"\['layernorm', 'rmsnorm', 'scalenorm'\]"):
        build_norm(tiny(norm="batchnorm"))
    with pytest.raises(ValueError, match=r"unknown activation 'mish'; choose one of \[.*'swiglu'.*\]"):
        activation_fn("mish")


@pytest.mark.parametrize("name", sorted(get_args(ActivationName)))
def test_every_activation_keeps_the_output_width(name):
    act = Activation(name)
    x = torch.randn(3, 8 * act.width_multiplier)
    assert act(x).shape == (3, 8)
