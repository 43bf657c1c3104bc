"""The position schemes against their papers' formulas, worked out here independently (complex rotations for RoFormer,
T5's and DeBERTa's bucket rules by hand), plus what every scheme owes a model: its state on the model's device and in
the scores' dtype, the documented ``forward(seq_len, start=0)``, and the settings each refuses with the fix."""

import math

import pytest
import torch

from lit_lm.models import TransformerConfig
from lit_lm.models.layers.positions import POSITION_SCHEMES, PositionScheme, register_position_scheme
from lit_lm.models.layers.positions.alibi import ALiBi
from lit_lm.models.layers.positions.disentangled import RelativePositionEmbedding, log_bucket_position
from lit_lm.models.layers.positions.learned import LearnedPositionEmbedding
from lit_lm.models.layers.positions.rotary import RotaryEmbedding, apply_rotary
from lit_lm.models.layers.positions.sinusoidal import ScaledSinusoidalPositionEmbedding, SinusoidalPositionEmbedding
from lit_lm.models.layers.positions.t5 import T5RelativeBias, t5_bucket
from tests.models.helpers import tiny

# float32 error: the reference angles below are computed in float64 from the same float32 inputs. A float32 angle
# p * theta (|p| < 20, theta <= 1) carries at most 2 roundings of relative size u = 2**-24 each (the power, the
# product): |error| <= 2 * 20 * u = 2.4e-6; cos and sin are 1-Lipschitz and add one more rounding u, so each
# entry sits within 3e-6 of the float64 value. Products with x (|x| <= 4) and the one sum scale that to
# 4 * 2 * 3e-6 + 2 * 4 * u < 3e-5.
ANGLE_ATOL = 3e-6
ROTATED_ATOL = 3e-5


def rotary_config(**overrides) -> TransformerConfig:
    return tiny(relative_positions="rotary", position_embedding="none", **overrides)


def test_rotary_angles_are_roformers():
    """RoFormer (Su et al. 2021): channel pair i turns at frequency base^(-2i/d), by p * that angle at position p;
    channel i and channel i + d/2 share the pair's angle."""
    config = rotary_config(rotary_base=100.0)  # head_dim 8: 4 pairs
    cos, sin = RotaryEmbedding(config)(5, start=3)
    d = config.head_dim
    theta = torch.tensor([100.0 ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    angles = torch.arange(3, 8, dtype=torch.float64)[:, None] * theta[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    torch.testing.assert_close(cos.double(), angles.cos(), atol=ANGLE_ATOL, rtol=0)
    torch.testing.assert_close(sin.double(), angles.sin(), atol=ANGLE_ATOL, rtol=0)
    whole = RotaryEmbedding(config)(8)  # start defaults to 0: the same angles from position 0
    torch.testing.assert_close(whole[0][3:], cos, atol=0, rtol=0)


def test_apply_rotary_turns_each_channel_pair_by_its_angle():
    """As complex numbers z = x_i + j x_(i + d/2), the rotation is z * exp(j angle): a counter-clockwise turn."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 5, 8) * 8 - 4  # [batch, heads, seq, head_dim], |x| <= 4
    angles = torch.rand(5, 4) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    z = torch.complex(x[..., :4].double(), x[..., 4:].double()) * torch.exp(1j * angles.double())
    expected = torch.cat([z.real, z.imag], dim=-1)
    torch.testing.assert_close(apply_rotary(x, (cos, sin)).double(), expected, atol=ROTATED_ATOL, rtol=0)
    assert apply_rotary(x.bfloat16(), (cos, sin)).dtype == torch.bfloat16  # the angles follow the queries' dtype


@pytest.mark.parametrize("overrides, accepted", [
    (dict(rotary_base=2.0), True), (dict(rotary_base=1.5), True), (dict(rotary_base=1.0), False),
    (dict(hidden_size=36, num_heads=4), False),  # head size 9
])
def test_rotary_needs_an_even_head_size_and_a_base_above_one(overrides, accepted):
    if accepted:
        rotary_config(**overrides)
        return
    with pytest.raises(ValueError, match=r"rotary positions need an even head size \(hidden_size / num_heads = "
                                         r"\d+\) and rotary_base > 1"):
        rotary_config(**overrides)


# Both bucket rules floor (T5) or ceil (DeBERTa) a logarithm. Where its exact value is an integer (e.g. T5 with 32
# buckets at distance 16: log(16/8) / log(128/8) * 8 = 2), float32 may land on either side of it and the bucket on
# either neighbour; such distances are left out (None below). Every other value sits more than 1e-4 from an integer,
# far beyond float32's error of a few 1e-7 on these values of at most 8.
AMBIGUOUS = 1e-4


def rounded(value: float, rounding) -> int | None:
    """``rounding(value)``, or None where value is a nonzero integer (0 is exact: the log of exactly 1)."""
    return None if value > 0.5 and abs(value - round(value)) < AMBIGUOUS else rounding(value)


def t5_reference(relative: int, buckets: int, max_distance: int, bidirectional: bool) -> int | None:
    """Mesh TensorFlow's _relative_position_bucket (Raffel et al. 2020), for one relative position, in plain Python."""
    n, bucket = -relative, 0
    if bidirectional:
        buckets //= 2
        bucket += buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = buckets // 2
    if n < max_exact:
        return bucket + n
    large = rounded(math.log(n / max_exact) / math.log(max_distance / max_exact) * (buckets - max_exact), math.floor)
    return None if large is None else bucket + min(max_exact + large, buckets - 1)


@pytest.mark.parametrize("buckets, max_distance, bidirectional", [(32, 128, True), (32, 128, False), (8, 20, True),
                                                                   (3, 8, False), (5, 9, False)])
def test_t5_buckets_are_the_papers(buckets, max_distance, bidirectional):
    relative = torch.arange(-40, 41)
    expected = [t5_reference(r, buckets, max_distance, bidirectional) for r in relative.tolist()]
    got = t5_bucket(relative, buckets, max_distance, bidirectional).tolist()
    assert [g for g, e in zip(got, expected) if e is not None] == [e for e in expected if e is not None]
    assert sum(e is None for e in expected) <= 4  # the few integer points only


def deberta_reference(distance: int, buckets: int, max_distance: int) -> int | None:
    """DeBERTa's make_log_bucket_position (He et al. 2021) for one distance, in plain Python."""
    mid = buckets // 2
    if abs(distance) <= mid:
        return distance
    log_pos = rounded(math.log(abs(distance) / mid) / math.log((max_distance - 1) / mid) * (mid - 1), math.ceil)
    return None if log_pos is None else int(math.copysign(log_pos + mid, distance))


@pytest.mark.parametrize("buckets, max_distance", [(256, 512), (8, 20), (5, 9), (7, 40)])
def test_deberta_log_buckets_are_the_papers(buckets, max_distance):
    distance = torch.arange(-60, 61)
    expected = [deberta_reference(d, buckets, max_distance) for d in distance.tolist()]
    got = log_bucket_position(distance, buckets, max_distance).tolist()
    assert [g for g, e in zip(got, expected) if e is not None] == [e for e in expected if e is not None]
    assert sum(e is None for e in expected) <= 4


@pytest.mark.parametrize("scheme, overrides", [
    ("t5", dict(position_buckets=8, max_relative_positions=4)), ("t5", dict(position_buckets=1)),
    ("disentangled", dict(position_buckets=8, max_relative_positions=5)),
])
def test_bucket_settings_that_leave_no_log_range_are_refused(scheme, overrides):
    """T5 needs max_distance beyond the exact half of the buckets (a causal side's log range would be empty);
    DeBERTa beyond buckets/2 + 1 (its log((max_distance - 1) / (buckets / 2)) would be 0)."""
    message = {"t5": r"relative_positions t5 needs position_buckets >= 2 \(T5: 32\)|with relative_positions t5, "
                     r"max_relative_positions \(or max_position_embeddings\) must exceed position_buckets / 2",
               "disentangled": r"with position_buckets 8, max_relative_positions \(or max_position_embeddings\) must "
                               r"exceed 5, got 5"}[scheme]
    with pytest.raises(ValueError, match=message):
        tiny(relative_positions=scheme, position_embedding="none", **overrides)


@pytest.mark.parametrize("scheme, overrides", [
    ("t5", dict(position_buckets=8, max_relative_positions=5)), ("t5", dict(position_buckets=2)),
    ("disentangled", dict(position_buckets=8, max_relative_positions=6)),
])
def test_bucket_settings_just_inside_the_bounds_are_allowed(scheme, overrides):
    tiny(relative_positions=scheme, position_embedding="none", **overrides)


def test_disentangled_positions_refuse_a_kv_cache():
    scheme = RelativePositionEmbedding(tiny(relative_positions="disentangled", position_embedding="none"))
    with pytest.raises(ValueError, match="disentangled attention has no KV cache: it is for encoders"):
        scheme(3, start=2)


SCHEMES = {
    "rotary": lambda: RotaryEmbedding(rotary_config()),
    "alibi": lambda: ALiBi(tiny(relative_positions="alibi", position_embedding="none")),
    "t5": lambda: T5RelativeBias(tiny(relative_positions="t5", position_embedding="none", position_buckets=8)),
    "disentangled": lambda: RelativePositionEmbedding(tiny(relative_positions="disentangled",
                                                           position_embedding="none", position_buckets=8)),
    "sinusoidal": lambda: SinusoidalPositionEmbedding(tiny(position_embedding="sinusoidal")),
    "scaled_sinusoidal": lambda: ScaledSinusoidalPositionEmbedding(tiny(position_embedding="scaled_sinusoidal")),
    "learned": lambda: LearnedPositionEmbedding(tiny()),
}


def tensors(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("name", SCHEMES)
def test_every_scheme_computes_on_the_models_device(name):
    """A model on a GPU gets its positions there. PyTorch's meta device stands in for it on a CPU-only machine:
    a position computed on the CPU would come back on the CPU, or fail to meet the meta weights."""
    scheme = SCHEMES[name]().to("meta")
    for tensor in tensors(scheme(6)):
        assert tensor.device.type == "meta"


@pytest.mark.parametrize("name", ["rotary", "alibi", "t5", "sinusoidal", "scaled_sinusoidal", "learned"])
def test_start_defaults_to_zero(name):
    """``forward(seq_len, start=0)``: the positions 0 .. seq_len - 1 (the heads of absolute-position models call it
    without a start)."""
    torch.manual_seed(0)
    scheme = SCHEMES[name]()
    if name == "learned":
        scheme.init_weights(0.02)
    for default, explicit, later in zip(tensors(scheme(5)), tensors(scheme(5, start=0)), tensors(scheme(5, start=1))):
        assert torch.equal(default, explicit) and not torch.equal(default, later)


@pytest.mark.parametrize("name", ["alibi", "t5"])
def test_bias_schemes_add_their_bias_in_the_scores_dtype(name):
    scheme = SCHEMES[name]()
    q = torch.zeros(1, 4, 3, 8, dtype=torch.bfloat16)
    state = scheme(3)
    assert state.dtype == torch.float32 and type(scheme).score_bias(state, q, q, None).dtype == torch.bfloat16


def test_scaled_sinusoids_start_at_one_over_the_root_of_the_width():
    """cramming's scale starts at 1/sqrt(hidden_size), also for a module built on its own (no init_weights)."""
    positions = ScaledSinusoidalPositionEmbedding(tiny(position_embedding="scaled_sinusoidal", hidden_size=64))
    assert positions.scale.item() == pytest.approx(1 / 8)


def test_learned_positions_initialise_at_the_given_std():
    """768 normal draws: the sample std of N draws has a standard error of std / sqrt(2 N) = 0.02 / 39 = 5e-4, so
    0.02 +- 0.003 is 6 standard errors wide."""
    positions = LearnedPositionEmbedding(tiny())  # 24 positions x 32
    torch.manual_seed(0)
    positions.init_weights(0.02)
    assert positions.weight.std().item() == pytest.approx(0.02, abs=0.003)


def test_a_sequence_past_the_learned_table_is_refused_with_the_lengths():
    positions = LearnedPositionEmbedding(tiny(max_position_embeddings=10, position_offset=2))  # takes 8 positions
    with pytest.raises(ValueError, match=r"sequence of 9 tokens is longer than the model takes \(8: "
                                         r"model.max_position_embeddings minus position_offset\); shorten "
                                         r"data.seq_length"):
        positions(7, start=2)


def test_registering_a_scheme_names_it_and_refuses_another_class_under_a_taken_name(monkeypatch):
    monkeypatch.setattr("lit_lm.models.layers.positions.base.POSITION_SCHEMES", dict(POSITION_SCHEMES))
    from lit_lm.models.layers.positions import base

    @register_position_scheme("test-scheme")
    class TestScheme(PositionScheme):
        pass

    assert base.POSITION_SCHEMES["test-scheme"] is TestScheme and TestScheme.name == "test-scheme"
    assert register_position_scheme("test-scheme")(TestScheme) is TestScheme  # the same class again (a re-import)

    class Other(PositionScheme):
        pass

    with pytest.raises(ValueError, match=r"relative_positions 'test-scheme' is already registered by "):
        register_position_scheme("test-scheme")(Other)
    assert base.POSITION_SCHEMES["test-scheme"] is TestScheme


def test_an_unknown_absolute_position_embedding_is_refused_with_the_choices():
    from lit_lm.models.layers.positions.absolute import build_position_embedding

    config = tiny()
    config.position_embedding = "rotary"  # set after the config's own checks, as a hand-edited config could be
    with pytest.raises(ValueError, match=r"unknown position_embedding 'rotary'; choose one of \['learned', 'none', "
                                         r"'scaled_sinusoidal', 'sinusoidal'\]\.$"):
        build_position_embedding(config)


def test_bucket_indices_are_made_on_the_tables_device(monkeypatch):
    """An embedding table on a GPU takes indices on the GPU. The meta device stands in for it, and the indices are
    checked where they are made (a meta table would take CPU indices without complaint)."""
    from lit_lm.models.layers.positions import disentangled, t5

    config = tiny(relative_positions="disentangled", position_embedding="none", position_buckets=8)
    assert disentangled.relative_distance_index(4, config, torch.device("meta")).device.type == "meta"
    made = []
    for module, name in ((disentangled, "relative_distance_index"), (t5, "t5_bucket")):
        real = getattr(module, name)

        def recording(*args, real=real, **kwargs):
            index = real(*args, **kwargs)
            made.append(index.device.type)
            return index

        monkeypatch.setattr(module, name, recording)
    SCHEMES["disentangled"]().to("meta")(6)
    SCHEMES["t5"]().to("meta")(6)
    assert made == ["meta", "meta"]
