"""BERT, RoBERTa and DeBERTa-v2 in HuggingFace transformers: their configs and weight names, against ours.

Each family says how the configs translate both ways and where each of our weights lives in its state dict
(``weight_names``); which of our configs it represents exactly is ``expressible.TABLE``'s. Nothing here imports
transformers.
"""

from dataclasses import dataclass
from typing import Callable

from lit_lm.hf.expressible import ACTIVATION_TO_HF, UnsupportedConfig, activation_from_hf, not_expressible
from lit_lm.models.config import TransformerConfig


def _shared_hf_kwargs(config: TransformerConfig) -> dict:
    return dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
        hidden_act=ACTIVATION_TO_HF.get(config.activation, config.activation),
        hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.attention_dropout,
        max_position_embeddings=config.max_position_embeddings, initializer_range=config.initializer_range,
        layer_norm_eps=config.norm_eps, pad_token_id=config.pad_token_id, tie_word_embeddings=config.tie_embeddings,
    )


def _shared_from_hf(hf) -> dict:
    return dict(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads, intermediate_size=hf.intermediate_size,
        max_position_embeddings=hf.max_position_embeddings, type_vocab_size=hf.type_vocab_size,
        activation=activation_from_hf(hf.hidden_act), head_activation=activation_from_hf(hf.hidden_act),
        norm="layernorm", norm_placement="post", norm_eps=hf.layer_norm_eps, embedding_norm=True, final_norm=False,
        qkv_bias=True, bias=True, head_transform=True, dropout=hf.hidden_dropout_prob,
        attention_dropout=hf.attention_probs_dropout_prob, initializer_range=hf.initializer_range,
        pad_token_id=hf.pad_token_id if hf.pad_token_id is not None else 0,
        tie_embeddings=getattr(hf, "tie_word_embeddings", True),
    )


def _layer_names(config: TransformerConfig, prefix: str, i: int, deberta: bool) -> dict[str, list[str]]:
    hf = f"{prefix}encoder.layer.{i}."
    ours = f"encoder.blocks.{i}."
    proj = ("query_proj", "key_proj", "value_proj") if deberta else ("query", "key", "value")
    names = {}
    for p in ("weight", "bias"):
        names[ours + f"attn.qkv.{p}"] = [hf + f"attention.self.{n}.{p}" for n in proj]
        names[ours + f"attn.out.{p}"] = [hf + f"attention.output.dense.{p}"]
        names[ours + f"attn_norm.{p}"] = [hf + f"attention.output.LayerNorm.{p}"]
        names[ours + f"ffn.up.{p}"] = [hf + f"intermediate.dense.{p}"]
        names[ours + f"ffn.down.{p}"] = [hf + f"output.dense.{p}"]
        names[ours + f"ffn_norm.{p}"] = [hf + f"output.LayerNorm.{p}"]
        if deberta and config.relative_positions == "disentangled" and not config.share_att_key:
            if "c2p" in config.relative_terms:
                names[ours + f"attn.relative.pos_key.{p}"] = [hf + f"attention.self.pos_key_proj.{p}"]
            if "p2c" in config.relative_terms:
                names[ours + f"attn.relative.pos_query.{p}"] = [hf + f"attention.self.pos_query_proj.{p}"]
    return names


def _embedding_names(config: TransformerConfig, prefix: str) -> dict[str, list[str]]:
    e = f"{prefix}embeddings."
    names = {
        "encoder.token_embedding.weight": [e + "word_embeddings.weight"],
        "encoder.embedding_norm.weight": [e + "LayerNorm.weight"],
        "encoder.embedding_norm.bias": [e + "LayerNorm.bias"],
    }
    if config.position_embedding == "learned":
        names["encoder.position_embedding.weight"] = [e + "position_embeddings.weight"]
    if config.type_vocab_size:
        names["encoder.token_type_embedding.weight"] = [e + "token_type_embeddings.weight"]
    return names


# HF heads keep the output bias twice: on the decoder (which its forward uses) and beside it (tied to the first
# only when the embeddings are tied). Ours maps to the decoder's; the other gets the same values.
OUTPUT_BIAS_ALIASES = {"cls.predictions.bias": "cls.predictions.decoder.bias", "lm_head.bias": "lm_head.decoder.bias"}


def _head_names(head: str, decoder: str, bias: str, transform_norm: str = "LayerNorm") -> dict[str, list[str]]:
    return {
        "head.dense.weight": [f"{head}dense.weight"], "head.dense.bias": [f"{head}dense.bias"],
        "head.norm.weight": [f"{head}{transform_norm}.weight"], "head.norm.bias": [f"{head}{transform_norm}.bias"],
        "head.decoder.weight": [decoder], "head.decoder.bias": [bias],
    }


@dataclass(frozen=True)
class Family:
    name: str  # its row in expressible.TABLE
    hf_class: str  # the transformers class, e.g. "BertForMaskedLM"
    config_to_hf: Callable[[TransformerConfig], dict]  # kwargs of the transformers config class
    config_from_hf: Callable[[object], TransformerConfig]
    weight_names: Callable[[TransformerConfig, object], dict[str, list[str]]]  # ours -> HF names (concatenated)

    def unsupported(self, config: TransformerConfig) -> list[str]:
        """What this family cannot express of ``config`` (empty: it represents it exactly)."""
        return not_expressible(self.name, config)


def _body_names(config: TransformerConfig, prefix: str, deberta: bool = False) -> dict[str, list[str]]:
    names = _embedding_names(config, prefix)
    for i in range(config.num_layers):
        names.update(_layer_names(config, prefix, i, deberta))
    return names


# ---- BERT ----
def _bert_names(config: TransformerConfig, hf_config) -> dict[str, list[str]]:
    names = _body_names(config, "bert.")
    names.update(_head_names("cls.predictions.transform.", "cls.predictions.decoder.weight",
                             "cls.predictions.decoder.bias"))
    return names


BERT = Family(
    "bert", "BertForMaskedLM",
    config_to_hf=lambda c: dict(_shared_hf_kwargs(c), type_vocab_size=max(1, c.type_vocab_size)),
    config_from_hf=lambda hf: TransformerConfig(**_shared_from_hf(hf)),
    weight_names=_bert_names,
)


# ---- RoBERTa: BERT with positions past the padding index, a GELU head and its own names ----
def _roberta_names(config: TransformerConfig, hf_config) -> dict[str, list[str]]:
    names = _body_names(config, "roberta.")
    names.update(_head_names("lm_head.", "lm_head.decoder.weight", "lm_head.decoder.bias", transform_norm="layer_norm"))
    return names


def _roberta_from_hf(hf) -> TransformerConfig:
    return TransformerConfig(**{**_shared_from_hf(hf), "head_activation": "gelu",
                                "position_offset": (hf.pad_token_id or 0) + 1})


ROBERTA = Family(
    "roberta", "RobertaForMaskedLM",
    config_to_hf=lambda c: dict(_shared_hf_kwargs(c), type_vocab_size=max(1, c.type_vocab_size)),
    config_from_hf=_roberta_from_hf,
    weight_names=_roberta_names,
)


# ---- DeBERTa-v2 / v3 ----
def _deberta_to_hf(config: TransformerConfig) -> dict:
    relative = config.relative_positions == "disentangled"
    kwargs = dict(
        _shared_hf_kwargs(config), type_vocab_size=config.type_vocab_size,
        position_biased_input=config.position_embedding == "learned", relative_attention=relative,
        pos_att_type=list(config.relative_terms) if relative else [],
        position_buckets=config.position_buckets or -1, max_relative_positions=config.max_relative_positions or -1,
        share_att_key=config.share_att_key, norm_rel_ebd="layer_norm" if config.relative_embedding_norm else "none",
        conv_kernel_size=config.conv_kernel_size, legacy=True,
    )
    if config.conv_kernel_size:
        kwargs.update(conv_groups=config.conv_groups, conv_act=ACTIVATION_TO_HF[config.conv_act])
    return kwargs


def _deberta_from_hf(hf) -> TransformerConfig:
    if getattr(hf, "embedding_size", hf.hidden_size) != hf.hidden_size:
        raise UnsupportedConfig("DeBERTa with embedding_size != hidden_size (a factorised embedding) is not supported.")
    head_size = getattr(hf, "attention_head_size", hf.hidden_size // hf.num_attention_heads)
    if head_size * hf.num_attention_heads != hf.hidden_size:
        raise UnsupportedConfig("DeBERTa with attention_head_size * heads != hidden_size is not supported.")
    terms = [t for t in (hf.pos_att_type or []) if t in ("c2p", "p2c")]
    relative = bool(getattr(hf, "relative_attention", False)) and bool(terms)
    norm_rel = [x.strip() for x in str(getattr(hf, "norm_rel_ebd", "none")).lower().split("|")]
    conv_kernel = getattr(hf, "conv_kernel_size", 0)
    return TransformerConfig(**{
        **_shared_from_hf(hf),
        "position_embedding": "learned" if getattr(hf, "position_biased_input", True) else "none",
        "relative_positions": "disentangled" if relative else "none",
        "relative_terms": tuple(terms) if relative else ("c2p", "p2c"),
        "position_buckets": max(0, getattr(hf, "position_buckets", -1)) if relative else 0,
        "max_relative_positions": max(0, getattr(hf, "max_relative_positions", -1)) if relative else 0,
        "share_att_key": bool(getattr(hf, "share_att_key", False)) if relative else False,
        "relative_embedding_norm": relative and "layer_norm" in norm_rel,
        "conv_kernel_size": conv_kernel,
        "conv_groups": getattr(hf, "conv_groups", 1) if conv_kernel else 1,
        "conv_act": activation_from_hf(getattr(hf, "conv_act", "tanh")) if conv_kernel else "tanh",
    })


def _deberta_names(config: TransformerConfig, hf_config) -> dict[str, list[str]]:
    names = _body_names(config, "deberta.", deberta=True)
    if config.relative_positions == "disentangled":
        names["encoder.relative_positions.table.weight"] = ["deberta.encoder.rel_embeddings.weight"]
        if config.relative_embedding_norm:
            for p in ("weight", "bias"):
                names[f"encoder.relative_positions.norm.{p}"] = [f"deberta.encoder.LayerNorm.{p}"]
    if config.conv_kernel_size:
        for p in ("weight", "bias"):
            names[f"encoder.ngie.conv.{p}"] = [f"deberta.encoder.conv.conv.{p}"]
            names[f"encoder.ngie.norm.{p}"] = [f"deberta.encoder.conv.LayerNorm.{p}"]
    if getattr(hf_config, "legacy", True):
        names.update(_head_names("cls.predictions.transform.", "cls.predictions.decoder.weight",
                                 "cls.predictions.decoder.bias"))
    else:  # the newer head multiplies by the word embeddings directly: always tied
        names.update(_head_names("lm_predictions.lm_head.", "deberta.embeddings.word_embeddings.weight",
                                 "lm_predictions.lm_head.bias"))
    return names


DEBERTA_V2 = Family(
    "deberta-v2", "DebertaV2ForMaskedLM",
    config_to_hf=_deberta_to_hf,
    config_from_hf=_deberta_from_hf,
    weight_names=_deberta_names,
)

FAMILIES = {f.name: f for f in (BERT, ROBERTA, DEBERTA_V2)}
FAMILY_BY_HF_CLASS = {f.hf_class: f for f in FAMILIES.values()}


def family_for(config: TransformerConfig) -> Family | None:
    """The built-in HuggingFace family that represents ``config`` exactly (the first of BERT, RoBERTa, DeBERTa-v2
    that does), or None (then: custom code)."""
    return next((family for family in FAMILIES.values() if not family.unsupported(config)), None)
