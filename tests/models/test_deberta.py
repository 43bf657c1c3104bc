"""DeBERTa's pieces: log buckets, the relative-embedding table, disentangled attention terms, nGiE."""

import math

import pytest
import torch
import torch.nn.functional as F

from lit_lm.models import EncoderForMaskedLM
from lit_lm.models.layers import (
    AttentionInputs, DisentangledAttentionBias, RelativePositionEmbedding, SelfAttention,
)
from lit_lm.models.layers.attention import avoids_sdpa_float32_fallback
from lit_lm.models.layers.positions.disentangled import (
    log_bucket_position, relative_distance_index, relative_scores,
)
from tests.models.helpers import tiny

DEBERTA = dict(relative_positions="disentangled", position_embedding="none", type_vocab_size=0)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def test_log_buckets_are_exact_near_logarithmic_far_and_odd():
    d = torch.arange(-600, 601)
    b = log_bucket_position(d, buckets=256, max_distance=512)
    near = d.abs() <= 128
    assert torch.equal(b[near], d[near])  # exact up to half the buckets
    assert torch.equal(b, -b.flip(0))  # odd: -d lands in the mirror bucket
    far = b[d >= 0]
    assert torch.all(far[1:] >= far[:-1])  # never decreasing with distance
    assert b[d == 511].item() == 255  # the last bucket at max_distance - 1
    assert far.unique().numel() < 600 // 2  # far distances share buckets
    widths = torch.bincount(far[far > 128] - 128)  # distances per bucket grow with distance
    assert widths[-20:].float().mean() > widths[1:20].float().mean()


# DeBERTa's log buckets written out by hand (He et al. 2021; transformers' make_log_bucket_position): with
# mid = bucket_size // 2, a distance r keeps its value when |r| <= mid, and otherwise goes to
#   sign(r) * (mid + ceil(x)),   x = log(|r| / mid) / log((max_position - 1) / mid) * (mid - 1).
# (bucket_size, max_position, r) -> bucket, x worked out on paper; every row but |r| <= mid has a fractional x (at
# least 0.05 from an integer: float32 round-off cannot move it across one), so ceil and floor differ on each of them.
LOG_BUCKETS = [
    # DeBERTa-v3's 256 buckets up to 512: mid 128, log(511 / 128) = 1.38434, mid - 1 = 127
    (256, 512, 0, 0), (256, 512, 1, 1), (256, 512, 128, 128), (256, 512, -128, -128),
    (256, 512, 129, 129),    # log(129/128) = 0.0077821 / 1.38434 * 127 = x 0.714 -> 128 + 1
    (256, 512, 130, 130),    # log(130/128) = 0.0155042 -> x 1.422 -> 128 + 2
    (256, 512, 140, 137),    # log(140/128) = 0.0896122 -> x 8.221 -> 128 + 9
    (256, 512, 200, 169),    # log(200/128) = 0.4462871 -> x 40.943 -> 128 + 41
    (256, 512, -200, -169),  # odd in r
    (256, 512, 300, 207),    # log(300/128) = 0.8517194 -> x 78.140 -> 128 + 79
    (256, 512, 400, 233),    # log(400/128) = 1.1394343 -> x 104.532 -> 128 + 105
    (256, 512, 1000, 317),   # past max_position nothing clips here: log(1000/128) = 2.0557250 -> x 188.593 -> 128 + 189
    # 32 buckets up to 128 (a crammed encoder's): mid 16, log(127 / 16) = 2.07157, mid - 1 = 15
    (32, 128, 16, 16),
    (32, 128, 17, 17),       # log(17/16) = 0.0606246 / 2.07157 * 15 = x 0.439 -> 16 + 1
    (32, 128, 20, 18),       # log(20/16) = 0.2231436 -> x 1.616 -> 16 + 2
    (32, 128, -30, -21),     # log(30/16) = 0.6286087 -> x 4.552 -> -(16 + 5)
    (32, 128, 50, 25),       # log(50/16) = 1.1394343 -> x 8.250 -> 16 + 9
    (32, 128, 100, 30),      # log(100/16) = 1.8325815 -> x 13.269 -> 16 + 14
    # 10 buckets up to 30: mid 5, log(29 / 5) = 1.75786, mid - 1 = 4
    (10, 30, 6, 6),          # log(6/5) = 0.1823216 / 1.75786 * 4 = x 0.415 -> 5 + 1
    (10, 30, 7, 6),          # log(7/5) = 0.3364722 -> x 0.766 -> 5 + 1
    (10, 30, -10, -7),       # log(10/5) = 0.6931472 -> x 1.577 -> -(5 + 2)
    (10, 30, 20, 9),         # log(20/5) = 1.3862944 -> x 3.155 -> 5 + 4
]

# The buckets of distances 0..11 with 6 buckets up to tiny()'s max_position_embeddings of 24 (the configuration of
# test_disentangled_bias_matches_the_definition): mid 3, log(23 / 3) = 2.03688, mid - 1 = 2; distances 4..8 have x in
# (0.28, 0.97) -> 3 + 1, distances 9..11 x in (1.07, 1.28) -> 3 + 2 (e.g. 9: log 3 = 1.09861 / 2.03688 * 2 = 1.079).
BUCKETS_6_UP_TO_24 = [0, 1, 2, 3, 4, 4, 4, 4, 4, 5, 5, 5]


@pytest.mark.parametrize("buckets, max_position, distance, bucket", LOG_BUCKETS)
def test_log_buckets_follow_debertas_formula_written_out(buckets, max_position, distance, bucket):
    assert log_bucket_position(torch.tensor([distance]), buckets, max_position).tolist() == [bucket]
    assert log_bucket_position(torch.tensor([-distance]), buckets, max_position).tolist() == [-bucket]


def test_relative_index_clips_to_the_table():
    config = tiny(**DEBERTA, max_relative_positions=3)  # no buckets: distances beyond 3 are clipped
    index = relative_distance_index(6, config)
    # distances 5 .. -5, shifted by the span (3) and clipped to the table's rows 0 .. 5, as DeBERTa does
    assert index.tolist() == [5, 5, 5, 5, 4, 3, 2, 1, 0, 0, 0]
    assert RelativePositionEmbedding(config).table.num_embeddings == 6


def test_relative_scores_read_each_pair_at_its_distance():
    n, d = 5, 3
    content, positions = torch.randn(2, 3, n, d), torch.randn(2, 2 * n - 1, d)  # [heads, batch, n, d], [heads, 2n-1, d]
    scores = relative_scores(content, positions)
    expected = torch.stack([torch.stack([content[:, :, i] @ positions[:, (n - 1) - (i - j)].unsqueeze(-1)
                                         for j in range(n)], -2) for i in range(n)], -3).squeeze(-1)
    torch.testing.assert_close(scores, expected)


@pytest.mark.parametrize("terms", [("c2p", "p2c"), ("c2p",), ("p2c",)])
@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("buckets", [0, 6])
def test_disentangled_bias_matches_the_definition(terms, share, buckets):
    config = tiny(**DEBERTA, relative_terms=terms, share_att_key=share, position_buckets=buckets,
                  relative_embedding_norm=True)
    attention = SelfAttention(config).eval()
    bias_layer: DisentangledAttentionBias = attention.relative
    assert hasattr(bias_layer, "pos_key") == (not share and "c2p" in terms)
    assert hasattr(bias_layer, "pos_query") == (not share and "p2c" in terms)
    n, heads, d = 12, 4, 8
    q, k = torch.randn(2, heads, n, d), torch.randn(2, heads, n, d)
    table = RelativePositionEmbedding(config)
    relative = table(n)
    bias = bias_layer(q, k, relative, attention.qkv)
    # by hand: project every table row, then look up each (query, key) pair's bucket
    rows = table.norm(table.table.weight)
    if share:
        pos_q, pos_k = rows @ attention.qkv.weight[:32].t() + attention.qkv.bias[:32], \
            rows @ attention.qkv.weight[32:64].t() + attention.qkv.bias[32:64]
    else:
        pos_q = bias_layer.pos_query(rows) if "p2c" in terms else None
        pos_k = bias_layer.pos_key(rows) if "c2p" in terms else None
    span = config.relative_span
    assert config.relative_max_distance == 24 and span == (buckets or 24)  # the hand table's setting; nothing clips
    expected = torch.zeros(2, heads, n, n)
    for i in range(n):
        for j in range(n):
            delta = i - j
            if buckets:  # by hand, not by the code under test
                delta = BUCKETS_6_UP_TO_24[abs(delta)] * (1 if delta >= 0 else -1)
            r = delta + span
            if "c2p" in terms:
                expected[:, :, i, j] += (q[:, :, i] * pos_k[r].view(heads, d)).sum(-1)
            if "p2c" in terms:
                expected[:, :, i, j] += (k[:, :, j] * pos_q[r].view(heads, d)).sum(-1)
    scale = 1 / math.sqrt(d * (1 + len(terms)))  # DeBERTa's sqrt(d * (1 + number of relative terms))
    assert attention.scale == pytest.approx(scale)
    torch.testing.assert_close(bias, expected * scale, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("terms", [("c2p", "p2c"), ("p2c",)])
def test_bf16_training_keeps_the_compute_dtype_instead_of_sdpas_float32_fallback(terms, monkeypatch):
    config = tiny(**DEBERTA, relative_terms=terms, initializer_range=0.2)
    attention = SelfAttention(config).train()  # training: the bias needs a gradient, which SDPA's CPU kernel lacks
    table = RelativePositionEmbedding(config)
    x = torch.randn(2, 12, 32)
    expected = attention(x, AttentionInputs(relative=table(12)))[0]  # float32: SDPA
    bf16, trainable = torch.randn(1, dtype=torch.bfloat16), torch.randn(1, requires_grad=True)
    assert avoids_sdpa_float32_fallback(bf16, trainable, dropout=0.0)
    assert not avoids_sdpa_float32_fallback(bf16, trainable.detach(), dropout=0.0)  # inference: SDPA's fused kernel
    assert not avoids_sdpa_float32_fallback(bf16.half(), trainable, dropout=0.0)  # fp16: CPUs emulate its matmuls

    def float32_fallback(*args, **kwargs):
        raise AssertionError("SDPA would compute this bf16 attention in float32")

    monkeypatch.setattr(F, "scaled_dot_product_attention", float32_fallback)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attention(x, AttentionInputs(relative=table(12)))[0]
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, atol=3e-2, rtol=3e-2)
    y.float().square().sum().backward()
    assert table.table.weight.grad.abs().sum() > 0  # the position terms are trained through the explicit path


def test_relative_embedding_norm_normalises_the_table_rows():
    rows = RelativePositionEmbedding(tiny(**DEBERTA, relative_embedding_norm=True, initializer_range=1.0))(5)
    torch.testing.assert_close(rows.mean(-1), torch.zeros(9), atol=1e-5, rtol=0)
    raw = RelativePositionEmbedding(tiny(**DEBERTA))
    assert not torch.allclose(raw(5).mean(-1), torch.zeros(9), atol=1e-3)


def test_relative_positions_make_the_model_position_aware_without_an_absolute_table():
    model = EncoderForMaskedLM(tiny(**DEBERTA, initializer_range=0.5)).eval()
    assert model.encoder.position_embedding is None
    ids = torch.randint(5, 50, (1, 10))
    order = torch.randperm(10)
    assert not torch.allclose(model(ids[:, order]).logits, model(ids).logits[:, order], atol=1e-3)


def test_ngie_convolution_changes_the_first_block_output_only_beside_it():
    config = tiny(**DEBERTA, conv_kernel_size=3, conv_groups=2, conv_act="gelu")
    model = EncoderForMaskedLM(config).eval()
    assert model.encoder.ngie.conv.weight.shape == (32, 16, 3)
    without = EncoderForMaskedLM(tiny(**DEBERTA)).eval()
    without.load_state_dict(model.state_dict(), strict=False)
    ids = torch.randint(5, 50, (1, 8))
    assert not torch.allclose(model(ids).logits, without(ids).logits, atol=1e-4)
    with torch.no_grad():  # a zero convolution with a zero bias adds nothing: only the norm remains
        model.encoder.ngie.conv.weight.zero_()
        model.encoder.ngie.conv.bias.zero_()
    embeddings = model.encoder.embed(ids)
    relative = model.encoder.relative_positions(8)
    first = model.encoder.blocks[0](embeddings, AttentionInputs(relative=relative)).hidden
    torch.testing.assert_close(model.encoder.ngie(embeddings, first), model.encoder.ngie.norm(first))


@pytest.mark.parametrize("bad, match", [
    (dict(relative_terms=()), "relative_terms"),
    (dict(position_buckets=1), "position_buckets"),
    (dict(position_buckets=64, max_relative_positions=20), "must exceed 33"),
    (dict(conv_kernel_size=2), "conv_kernel_size"),
])
def test_bad_deberta_settings_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny(**DEBERTA, **bad)
