"""GPT-2 (``GPT2LMHeadModel``) in HuggingFace transformers: its config and weight names, against our decoder.

GPT-2 keeps its linear layers as ``Conv1D`` (weight ``[in, out]``, the transpose of ``nn.Linear``'s); those weights
are transposed on the way. Nothing here imports transformers.
"""

from lit_lm.hf.expressible import ACTIVATION_TO_HF, UnsupportedConfig, activation_from_hf, not_expressible
from lit_lm.models.config import TransformerConfig

HF_CLASS = "GPT2LMHeadModel"


def unsupported(config: TransformerConfig) -> list[str]:
    """What GPT-2 cannot represent of a decoder config (empty: it represents it exactly); see expressible.TABLE."""
    return not_expressible("gpt2", config)


def config_to_hf(config: TransformerConfig) -> dict:
    """Keyword arguments of ``transformers.GPT2Config``."""
    return dict(
        vocab_size=config.vocab_size, n_positions=config.max_position_embeddings, n_embd=config.hidden_size,
        n_layer=config.num_layers, n_head=config.num_heads, n_inner=config.intermediate_size,
        activation_function=ACTIVATION_TO_HF[config.activation], resid_pdrop=config.dropout,
        embd_pdrop=config.dropout, attn_pdrop=config.attention_dropout, layer_norm_epsilon=config.norm_eps,
        initializer_range=config.initializer_range, tie_word_embeddings=config.tie_embeddings,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def config_from_hf(hf) -> TransformerConfig:
    """Our decoder config for a ``GPT2Config``; refuses the GPT-2 variants our decoder does not compute."""
    if getattr(hf, "scale_attn_by_inverse_layer_idx", False) or not getattr(hf, "scale_attn_weights", True):
        raise UnsupportedConfig("GPT-2 with scale_attn_by_inverse_layer_idx or without scale_attn_weights is not "
                                "supported (lit-lm scales attention by 1/sqrt(head size)).")
    if getattr(hf, "add_cross_attention", False):
        raise UnsupportedConfig("GPT-2 with cross-attention is an encoder-decoder part, not a causal LM.")
    return TransformerConfig(
        vocab_size=hf.vocab_size, hidden_size=hf.n_embd, num_layers=hf.n_layer, num_heads=hf.n_head,
        intermediate_size=hf.n_inner or 4 * hf.n_embd, max_position_embeddings=hf.n_positions, type_vocab_size=0,
        activation=activation_from_hf(hf.activation_function), norm="layernorm", norm_placement="pre",
        norm_eps=hf.layer_norm_epsilon, embedding_norm=False, final_norm=True, qkv_bias=True, bias=True,
        head_transform=False, tie_embeddings=getattr(hf, "tie_word_embeddings", True), dropout=hf.resid_pdrop,
        attention_dropout=hf.attn_pdrop, initializer_range=hf.initializer_range, pad_token_id=0,
    )


def weight_names(config: TransformerConfig) -> dict[str, tuple[str, bool]]:
    """Our state-dict name -> (GPT-2's name, whether the weight is transposed between the two)."""
    names = {
        "decoder.token_embedding.weight": ("transformer.wte.weight", False),
        "decoder.position_embedding.weight": ("transformer.wpe.weight", False),
        "decoder.final_norm.weight": ("transformer.ln_f.weight", False),
        "decoder.final_norm.bias": ("transformer.ln_f.bias", False),
        "head.decoder.weight": ("lm_head.weight", False),
    }
    for i in range(config.num_layers):
        ours, hf = f"decoder.blocks.{i}.", f"transformer.h.{i}."
        for our_name, hf_name in (("attn_norm", "ln_1"), ("attn.qkv", "attn.c_attn"), ("attn.out", "attn.c_proj"),
                                  ("ffn_norm", "ln_2"), ("ffn.up", "mlp.c_fc"), ("ffn.down", "mlp.c_proj")):
            conv1d = "norm" not in our_name
            names[f"{ours}{our_name}.weight"] = (f"{hf}{hf_name}.weight", conv1d)
            names[f"{ours}{our_name}.bias"] = (f"{hf}{hf_name}.bias", False)
    return names
