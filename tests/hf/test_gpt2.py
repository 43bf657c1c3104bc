"""HuggingFace interoperability of the decoder: GPT-2 logits parity both ways, exports that generate the same."""

import random

import pytest
import torch

from lit_lm.generate import generate
from lit_lm.hf import UnsupportedConfig, from_hf, save_pretrained, to_hf
from lit_lm.hf.remote import CODE_FILE
from lit_lm.models import DecoderForCausalLM
from tests.conftest import sentence
from tests.models.test_decoder import GPT2
from tests.models.helpers import tiny

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=40, initializer_range=0.2,
             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
GPT2_CONFIGS = {
    "gpt2": dict(),
    "relu-untied-inner-48": dict(activation_function="relu", tie_word_embeddings=False, n_inner=48,
                                 layer_norm_epsilon=1e-6),
    "gelu-2-heads-3-layers": dict(activation_function="gelu", n_head=2, n_layer=3),
}


def batches(vocab: int = 64):
    """A packed batch (no padding, the padding-free causal case) and a right-padded one."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 17), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    return [(ids, None), (ids, mask)]


@pytest.mark.parametrize("settings", GPT2_CONFIGS.values(), ids=GPT2_CONFIGS.keys())
def test_logits_match_gpt2_both_ways(settings):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**SMALL, **settings})).eval()
    ours = from_hf(hf).eval()
    assert isinstance(ours, DecoderForCausalLM)
    back = to_hf(ours).eval()
    for ids, mask in batches():
        real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        with torch.no_grad():
            want = hf(input_ids=ids, attention_mask=mask).logits
            got = ours(ids, attention_mask=mask).logits
            again = back(input_ids=ids, attention_mask=mask).logits
        assert (got - want)[real].abs().max() <= 1e-4
        assert (again - want)[real].abs().max() <= 1e-4


def test_our_random_model_exports_as_gpt2_with_the_same_logits_and_loss():
    torch.manual_seed(0)
    ours = DecoderForCausalLM(tiny(**{**GPT2, "vocab_size": 64, "initializer_range": 0.2, "tie_embeddings": False}))
    ours.eval()
    hf = to_hf(ours).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    ids, _ = batches()[0]
    with torch.no_grad():
        want, got = ours(ids, labels=ids), hf(input_ids=ids, labels=ids)
    assert (got.logits - want.logits).abs().max() <= 1e-4
    assert abs(got.loss.item() - want.loss.item()) <= 1e-5  # the same shift-by-one next-token loss


def test_configs_gpt2_cannot_express_are_refused_for_gpt2_and_exported_as_custom_code():
    primer = DecoderForCausalLM(tiny(**{**GPT2, "relative_positions": "rotary", "position_embedding": "none",
                                        "qkv_conv_kernel_size": 3, "activation": "squared_relu"}))
    with pytest.raises(UnsupportedConfig, match="relative_positions: rotary.*Primer"):
        to_hf(primer, "gpt2")
    with pytest.raises(ValueError, match="'auto', 'gpt2' or 'custom'"):
        to_hf(primer, "bert")
    assert type(to_hf(primer)).__name__ == "LitLMForCausalLM"


@pytest.fixture(scope="module")
def gpt_tokenizer():
    from lit_lm.data.tokenizer import TokenizerConfig, train_tokenizer
    rng = random.Random(0)
    texts = [" ".join(sentence(rng) for _ in range(5)) for _ in range(300)]
    return train_tokenizer(texts, TokenizerConfig(kind="byte_bpe", vocab_size=300))


def prompt_ids(tokenizer, text: str = "the quick cat") -> torch.Tensor:
    eot = tokenizer.token_to_id("<|endoftext|>")
    return torch.tensor([[eot, *tokenizer.encode(text).ids]])


@pytest.mark.parametrize("switches", [{}, dict(relative_positions="rotary", position_embedding="none",
                                               qkv_conv_kernel_size=3, norm="rmsnorm", bias=False, qkv_bias=False)],
                         ids=["gpt2-class", "custom-code"])
def test_exported_folder_loads_with_auto_classes_and_generates_the_same_greedy_tokens(gpt_tokenizer, tmp_path,
                                                                                       switches):
    torch.manual_seed(0)
    vocab = gpt_tokenizer.get_vocab_size()
    ours = DecoderForCausalLM(tiny(**{**GPT2, "vocab_size": vocab, "max_position_embeddings": 64,
                                      "initializer_range": 0.3, **switches})).eval()
    folder = save_pretrained(ours, tmp_path / "export", tokenizer=gpt_tokenizer)
    custom = bool(switches)
    assert (folder / CODE_FILE).exists() == custom
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=custom).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=custom)
    assert type(hf).__name__ == ("LitLMForCausalLM" if custom else "GPT2LMHeadModel")
    text = "the quick cat sees the hidden garden."
    assert tokenizer(text)["input_ids"] == gpt_tokenizer.encode(text).ids
    eot = gpt_tokenizer.token_to_id("<|endoftext|>")
    assert hf.generation_config.eos_token_id == eot
    ids = prompt_ids(gpt_tokenizer)
    with torch.no_grad():
        want = generate(ours, ids, max_new_tokens=20, eos_token_id=eot)
        got = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                          pad_token_id=eot)
    assert want.shape[1] > ids.shape[1] + 5  # it generated something before any end-of-text
    assert got.tolist() == want.tolist()
    reloaded = from_hf(hf).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, ours(ids).logits)
