"""What each built-in HuggingFace class can express of a lit-lm config: one declarative table, a whitelist.

For each family (``bert``, ``roberta``, ``deberta-v2``, ``gpt2``), ``TABLE`` names the config fields it has an
opinion on and the values it expresses. A value not listed (a new norm, activation or position scheme a user adds)
is not expressible, and so is any config field the table does not name unless it keeps its default: a new switch,
off by default, changes nothing. Export then refuses that class, or picks lit-lm's own custom code ('auto'); nothing
in ``lit_lm.hf`` needs an edit for a new trick. Nothing here imports transformers.
"""

from dataclasses import MISSING, fields
from typing import Callable

from lit_lm.models.config import TransformerConfig


class UnsupportedConfig(ValueError):
    """A HuggingFace model (or a lit-lm config) that the other side cannot represent exactly."""


# our activation -> HuggingFace's ACT2FN name, and back (gelu_new is the tanh formula written out)
ACTIVATION_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "squared_relu": "relu2",
                    "silu": "silu", "tanh": "tanh"}
ACTIVATION_FROM_HF = {**{v: k for k, v in ACTIVATION_TO_HF.items()}, "gelu_new": "gelu_tanh", "swish": "silu"}
HF_ACTIVATIONS = tuple(ACTIVATION_TO_HF)

ANY = "any value"  # a field the family expresses whatever it holds
Allowed = tuple | str | Callable[[TransformerConfig], tuple]  # values, ANY, or the values as a function of the config

# Every family: sizes, training switches that leave the weights and the eval-mode logits alone, and the settings of
# switches a family keeps off (rotary, mixture of experts, DeBERTa's relative positions and nGiE: DeBERTa's row says
# its own), which change nothing while that switch is off. No built-in class computes the tricks of NO_EXTRAS.
EVERY_FAMILY = {name: ANY for name in (
    "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings",
    "type_vocab_size", "norm_eps", "tie_embeddings", "sparse_prediction", "sparse_prediction_rate", "dropout",
    "attention_dropout", "initializer_range", "pad_token_id", "rotary_base", "moe_top_k", "moe_capacity_factor",
    "moe_aux_loss_weight", "relative_terms", "position_buckets", "max_relative_positions", "share_att_key",
    "relative_embedding_norm", "conv_groups", "conv_act",
    "token_dropping_keep", "token_dropping_start", "token_dropping_end")}  # token dropping: training only
NO_EXTRAS = {"talking_heads": (False,), "qkv_conv_kernel_size": (0,), "moe_experts": (0,), "output_softmaxes": (1,),
             "qkv_bias": (True,), "bias": (True,), "activation": HF_ACTIVATIONS}
# BERT's block: post-LN LayerNorm, a normalised embedding sum, the MLM head transform.
BERT_BLOCK = {"norm": ("layernorm",), "norm_placement": ("post",), "embedding_norm": (True,), "final_norm": (False,),
              "head_transform": (True,), "head_position_embedding": (False,)}
BERT_POSITIONS = {"position_embedding": ("learned",), "relative_positions": ("none",), "conv_kernel_size": (0,)}

TABLE: dict[str, dict[str, Allowed]] = {
    "bert": {**EVERY_FAMILY, **NO_EXTRAS, **BERT_BLOCK, **BERT_POSITIONS, "position_offset": (0,),
             "head_activation": lambda c: (c.activation,)},
    "roberta": {**EVERY_FAMILY, **NO_EXTRAS, **BERT_BLOCK, **BERT_POSITIONS,
                "position_offset": lambda c: (c.pad_token_id + 1,), "head_activation": ("gelu",)},
    "deberta-v2": {
        **EVERY_FAMILY, **NO_EXTRAS, **BERT_BLOCK, "position_embedding": ("learned", "none"), "position_offset": (0,),
        "relative_positions": ("none", "disentangled"),
        "relative_embedding_norm": lambda c: (False, True) if c.relative_positions == "disentangled" else (False,),
        "conv_kernel_size": ANY, "conv_act": HF_ACTIVATIONS, "head_activation": lambda c: (c.activation,),
    },
    "gpt2": {
        **EVERY_FAMILY, **NO_EXTRAS, "position_embedding": ("learned",), "position_offset": (0,),
        "relative_positions": ("none",), "conv_kernel_size": (0,), "head_position_embedding": (False,),
        "norm": ("layernorm",), "norm_placement": ("pre",), "embedding_norm": (False,), "final_norm": (True,),
        "head_transform": (False,), "head_activation": ANY,  # no head transform: its activation is unused
    },
}
# What a field's trick is called, for the messages
TRICKS = {"qkv_conv_kernel_size": "Primer", "moe_experts": "mixture of experts",
          "output_softmaxes": "mixture of softmaxes", "talking_heads": "talking heads", "conv_kernel_size": "nGiE",
          "head_position_embedding": "DeBERTa's enhanced mask decoder", "qkv_bias": "biases", "bias": "biases"}


def _default(field) -> object:
    return field.default if field.default is not MISSING else field.default_factory()


def not_expressible(family: str, config: TransformerConfig) -> list[str]:
    """One line per setting of ``config`` that ``family`` cannot express, e.g. ``norm: rmsnorm (needs layernorm)``;
    empty when the family represents the config exactly. Fields are checked in the config's order."""
    table = TABLE[family]
    problems = []
    for field in fields(config):
        value = getattr(config, field.name)
        allowed = table.get(field.name, (_default(field),))  # unnamed: a new switch, expressible only while off
        if allowed == ANY:
            continue
        allowed = allowed(config) if callable(allowed) else allowed
        if value not in allowed:
            trick = f" ({TRICKS[field.name]})" if field.name in TRICKS else ""
            problems.append(f"{field.name}: {value}{trick}, needs {' or '.join(map(str, allowed))}")
    return problems


def refusal(hf_class: str, problems: list[str]) -> UnsupportedConfig:
    """The error of an export to ``hf_class`` that cannot express the config."""
    return UnsupportedConfig(f"{hf_class} cannot represent this config ({'; '.join(problems)}); use architecture "
                             f"'auto' or 'custom' to export it with its own code.")


def activation_from_hf(name) -> str:
    """Our name of a HuggingFace ``hidden_act``."""
    if not isinstance(name, str) or name not in ACTIVATION_FROM_HF:
        raise UnsupportedConfig(f"hidden_act {name!r} has no lit-lm equivalent; known: {sorted(ACTIVATION_FROM_HF)}.")
    return ACTIVATION_FROM_HF[name]
