"""The mixture-of-experts feed-forward layer: routing, capacity, load balancing, and its loss reaching training."""

import torch

from lit_lm.models import TransformerConfig
from lit_lm.models.layers import MixtureOfExperts
from lit_lm.modules import MaskedLMModule
from tests.models.helpers import tiny
from tests.float_error import reordered_tolerance


def moe(**overrides) -> MixtureOfExperts:
    torch.manual_seed(0)
    layer = MixtureOfExperts(tiny(moe_experts=4, **overrides)).eval()
    layer.init_weights(0.3)
    torch.nn.init.normal_(layer.router.weight, std=1.0)
    return layer


def by_hand(layer: MixtureOfExperts, x: torch.Tensor) -> torch.Tensor:
    """Every token through its top-k experts, one at a time."""
    tokens = x.reshape(-1, x.shape[-1])
    probs = layer.router(tokens).softmax(-1)
    gate, expert = probs.topk(layer.top_k, dim=-1)
    if layer.top_k > 1:
        gate = gate / gate.sum(-1, keepdim=True)
    rows = []
    for t in range(len(tokens)):
        row = 0
        for g, e in zip(gate[t], expert[t]):
            h = layer.act(tokens[t] @ layer.up[e] + (0 if layer.up_bias is None else layer.up_bias[e, 0]))
            row = row + g * (h @ layer.down[e] + (0 if layer.down_bias is None else layer.down_bias[e, 0]))
        rows.append(row)
    return torch.stack(rows).view(x.shape)


def test_with_ample_capacity_every_token_goes_through_its_top_k_experts():
    for k, activation in [(1, "gelu"), (2, "swiglu")]:
        layer = moe(moe_top_k=k, moe_capacity_factor=4.0, activation=activation)
        x = torch.randn(2, 6, 32)
        out, _ = layer(x)
        expected = by_hand(layer, x)  # another order of the same sums: one layer, the widest sum 64 wide
        torch.testing.assert_close(out, expected, **reordered_tolerance(expected, inner=64, layers=1))


def test_an_expert_takes_at_most_its_capacity_and_later_tokens_skip_the_layer():
    layer = moe(moe_capacity_factor=0.5)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0] += 1.0  # one expert wins every token with a positive sum
    x = torch.randn(1, 16, 32).abs()
    out, aux = layer(x)
    capacity = layer.capacity(16)  # ceil(0.5 * 16 / 4) = 2
    assert capacity == 2
    processed = (out.abs().sum(-1) > 0).squeeze(0)
    assert processed.tolist() == [True] * capacity + [False] * (16 - capacity)  # first come, first served
    torch.testing.assert_close(out[:, :capacity], by_hand(layer, x)[:, :capacity])
    assert aux.item() > 3.0  # all tokens on one of 4 experts: close to the worst balance, 4


def test_balanced_routing_gives_an_aux_loss_near_one():
    layer = moe()
    with torch.no_grad():
        layer.router.weight.zero_()
    _, aux = layer(torch.randn(1, 16, 32))
    torch.testing.assert_close(aux, torch.tensor(1.0))  # uniform probabilities: the minimum, 1


def test_padding_is_never_routed_and_takes_no_capacity():
    layer = moe(moe_capacity_factor=0.5)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0] += 1.0
    x = torch.randn(1, 16, 32).abs()
    mask = torch.ones(1, 16, 1)
    mask[:, :8] = 0  # padding first: were it routed, it would fill the expert
    out, _ = layer(x, mask)
    assert (out[:, :8] == 0).all()
    torch.testing.assert_close(out[:, 8:10], by_hand(layer, x)[:, 8:10])


def test_the_load_balancing_loss_is_weighted_into_the_training_loss():
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=60, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                               max_position_embeddings=16, dropout=0.0, attention_dropout=0.0, moe_experts=4,
                               moe_aux_loss_weight=0.5)
    module = MaskedLMModule(config, special_token_ids=[0, 1, 2, 3, 4], mask_token_id=4, seq_length=16, mask_rate=0.3)
    module.log = lambda *args, **kwargs: None
    batch = {"input_ids": torch.randint(5, 60, (4, 16))}
    torch.manual_seed(1)
    loss = module.training_step(batch, 0)
    torch.manual_seed(1)
    inputs, labels = module._mask(batch["input_ids"])
    out = module(inputs, labels=labels)
    assert out.aux_loss is not None and out.aux_loss > 0
    torch.testing.assert_close(loss, out.loss + out.aux_loss)
