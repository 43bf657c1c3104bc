"""Generation: KV cache and no cache agree, greedy is the argmax, sampling filters do what they say."""

import pytest
import torch

from lit_lm.generate import filter_logits, generate, next_tokens
from lit_lm.models import DecoderForCausalLM
from tests.models.helpers import tiny
from tests.models.test_decoder import EVERY_SWITCH, GPT2


def model(**switches) -> DecoderForCausalLM:
    torch.manual_seed(0)
    return DecoderForCausalLM(tiny(**{**GPT2, "initializer_range": 0.3, "max_position_embeddings": 40, **switches}))


@pytest.mark.parametrize("switches", [EVERY_SWITCH[k] for k in ("gpt2", "rotary", "t5-buckets", "primer", "moe")],
                         ids=["gpt2", "rotary", "t5-buckets", "primer", "moe"])
def test_kv_cache_generation_equals_no_cache_generation(switches):
    decoder = model(**switches)
    prompts = torch.randint(0, 50, (3, 6), generator=torch.Generator().manual_seed(1))
    greedy = [generate(decoder, prompts, 12, use_cache=cache) for cache in (True, False)]
    assert torch.equal(greedy[0], greedy[1]) and greedy[0].shape == (3, 18)
    sampled = [generate(decoder, prompts, 12, temperature=1.0, top_k=20, top_p=0.9, use_cache=cache,
                        generator=torch.Generator().manual_seed(3)) for cache in (True, False)]
    assert torch.equal(sampled[0], sampled[1])
    assert not torch.equal(sampled[0], greedy[0])  # sampling does sample


def test_greedy_follows_the_argmax_of_the_full_forward():
    decoder = model().eval()
    out = generate(decoder, torch.tensor([[1, 2, 3]]), 5)
    with torch.no_grad():
        logits = decoder(out[:, :-1]).logits
    assert torch.equal(logits[0, 2:].argmax(-1), out[0, 3:])


def test_generation_stops_at_end_of_text_and_pads_finished_rows_with_it():
    decoder = model().eval()
    prompts = torch.randint(0, 50, (2, 4), generator=torch.Generator().manual_seed(2))
    free = generate(decoder, prompts, 8)
    eos = int(free[0, 5])  # the second generated token of row 0: row 0 then stops
    out = generate(decoder, prompts, 8, eos_token_id=eos)
    assert out[0, 5] == eos and (out[0, 5:] == eos).all()
    assert decoder.training is False


def test_left_padded_prompts_generate_as_alone_with_relative_positions():
    decoder = model(relative_positions="rotary", position_embedding="none")
    alone = generate(decoder, torch.tensor([[7, 8, 9]]), 6)
    padded = generate(decoder, torch.tensor([[0, 0, 7, 8, 9], [1, 2, 3, 4, 5]]), 6,
                      attention_mask=torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]))
    assert torch.equal(padded[0, 2:], alone[0])


def test_top_k_and_top_p_keep_exactly_the_tokens_they_should():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    draws = next_tokens(logits.expand(4000, 4), temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(0))
    share = torch.bincount(draws, minlength=4) / 4000
    assert share[3] == 0 and abs(share[0] - 0.5 / 0.95) < 0.03  # renormalised over the 3 kept tokens


def test_too_long_a_generation_for_the_position_table_is_a_clear_error():
    with pytest.raises(ValueError, match="more than the model's 40 positions"):
        generate(model(), torch.zeros(1, 30, dtype=torch.long), 20)
    with pytest.raises(ValueError, match="temperature"):
        generate(model(), torch.zeros(1, 3, dtype=torch.long), 2, temperature=-1.0)
