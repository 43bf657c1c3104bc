"""Adding a position scheme is one class, registered under a new name, plus the config field: proven end to end here.

The toy schemes live in this file only, as a user's would: nothing in lit_lm learns their names.
"""

import ast
from pathlib import Path
from typing import get_args

import pytest
import torch
from torch import nn

import lit_lm.models
from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM, TransformerConfig
from lit_lm.models.config import RelativePositions
from lit_lm.models.layers.positions import POSITION_SCHEMES, PositionScheme, register_position_scheme
from tests.models.helpers import tiny
from tests.float_error import model_tolerance


class LayerGain(nn.Module):
    """Each attention layer's own learned gain on the toy bias (a per-layer module, kept as ``attn.relative``)."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(num_heads, 1, 1))

    def init_weights(self, std: float) -> None:
        nn.init.ones_(self.gain)


@register_position_scheme("toy-distance-penalty")
class DistancePenalty(PositionScheme):
    """ALiBi-like (Press et al. 2022), simplified: each head's scores fall linearly with the distance to the key, at
    a learned slope per head, times a learned gain per layer and head."""

    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__(config, causal)
        self.slopes = nn.Parameter(torch.empty(config.num_heads))

    def init_weights(self, std: float) -> None:
        with torch.no_grad():
            self.slopes.copy_(torch.linspace(0.25, 2.0, len(self.slopes)))

    @classmethod
    def check_config(cls, config: TransformerConfig) -> None:
        if config.position_embedding != "none":
            raise ValueError("model config: relative_positions toy-distance-penalty needs position_embedding: none.")

    @classmethod
    def layer_module(cls, config: TransformerConfig) -> nn.Module:
        return LayerGain(config.num_heads)

    def forward(self, seq_len: int, start: int = 0) -> torch.Tensor:
        queries = torch.arange(start, start + seq_len, device=self.slopes.device)
        keys = torch.arange(start + seq_len, device=self.slopes.device)
        return -self.slopes[:, None, None] * (queries[:, None] - keys[None, :]).abs()  # [heads, queries, keys]

    @staticmethod
    def score_bias(state, q, k, attention):
        return (attention.relative.gain * state).to(q.dtype)


@register_position_scheme("toy-lookahead")
class Lookahead(PositionScheme):
    """Rotates queries and keys by a quarter turn per position: fine both ways, but declared unsafe for decoders."""

    causal_safe = False

    def forward(self, seq_len: int, start: int = 0) -> torch.Tensor:
        return torch.arange(start, start + seq_len, dtype=torch.float32) * (torch.pi / 2)

    @staticmethod
    def rotate(state, q, k):
        cos, sin = state.cos()[:, None].to(q.dtype), state.sin()[:, None].to(q.dtype)
        turn = lambda x: torch.cat([-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]], dim=-1)  # noqa: E731
        return q * cos + turn(q) * sin, k * cos + turn(k) * sin


TOY = dict(relative_positions="toy-distance-penalty", position_embedding="none", type_vocab_size=0)
GPT2 = dict(norm_placement="pre", final_norm=True, embedding_norm=False, head_transform=False)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("model_class, extra", [(EncoderForMaskedLM, {}), (DecoderForCausalLM, GPT2)])
def test_a_registered_scheme_trains_end_to_end_and_changes_the_output(model_class, extra):
    model = model_class(tiny(**TOY, **extra))
    assert model.body.relative_positions.slopes.shape == (4,)
    assert "blocks.1.attn.relative.gain" in dict(model.body.named_parameters())
    ids = torch.randint(5, 50, (2, 12))
    out = model(ids, labels=ids)
    out.loss.backward()
    for name, param in model.named_parameters():
        if "slopes" in name or "gain" in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    plain = model_class(tiny(**{**TOY, "relative_positions": "none"}, **extra)).eval()
    plain.load_state_dict(model.state_dict(), strict=False)  # the same weights, without the toy's
    model.eval()
    assert not torch.allclose(model(ids).logits, plain(ids).logits, atol=1e-3)


def test_a_registered_scheme_decodes_with_a_kv_cache_like_full_forwards():
    model = DecoderForCausalLM(tiny(**TOY, **GPT2, initializer_range=0.3)).eval()
    ids = torch.randint(5, 50, (1, 10))
    cache = model.new_cache()
    steps = [model(ids[:, :6], cache=cache).logits]
    steps += [model(ids[:, i : i + 1], cache=cache).logits for i in range(6, 10)]
    full = model(ids).logits
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **model_tolerance(model, full))


def test_a_scheme_that_is_not_causal_safe_works_in_an_encoder_and_is_refused_by_a_decoder():
    config = tiny(relative_positions="toy-lookahead", position_embedding="none", initializer_range=0.5)
    model = EncoderForMaskedLM(config).eval()
    ids = torch.randint(5, 50, (1, 8))
    plain = EncoderForMaskedLM(tiny(position_embedding="none", initializer_range=0.5)).eval()
    plain.load_state_dict(model.state_dict())  # no parameters of its own: the rotation alone changes the output
    assert not torch.allclose(model(ids).logits, plain(ids).logits, atol=1e-3)
    with pytest.raises(ValueError, match="a decoder cannot use relative_positions: toy-lookahead \\(use .*rotary"):
        DecoderForCausalLM(config)


def test_unknown_names_and_bad_settings_are_refused_when_the_config_is_made():
    with pytest.raises(ValueError, match=r"unknown relative_positions 'xpos'; choose one of \[.*'rotary'.*"
                                         r"'toy-distance-penalty'.*\]"):
        tiny(relative_positions="xpos")
    with pytest.raises(ValueError, match="toy-distance-penalty needs position_embedding: none"):
        tiny(relative_positions="toy-distance-penalty")


def test_the_config_literal_lists_exactly_the_built_in_schemes():
    built_in = {name for name, scheme in POSITION_SCHEMES.items() if scheme.__module__.startswith("lit_lm.")}
    assert set(get_args(RelativePositions)) == built_in == {"none", "rotary", "t5", "disentangled", "alibi"}


def test_no_model_file_outside_the_positions_package_names_a_scheme():
    """Attention, blocks and the body ask the scheme; only config.py's Literal (for --help) lists the names."""
    root = Path(lit_lm.models.__file__).parent
    for path in root.rglob("*.py"):
        if "positions" in path.parts or path.name == "config.py":
            continue
        strings = {node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)}
        assert not strings & set(POSITION_SCHEMES) - {"none"}, path
