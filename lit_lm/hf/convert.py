"""Weights both ways between lit-lm models and HuggingFace transformers models, with the same logits.

``to_hf`` picks the built-in class when ``expressible.TABLE`` says it represents the config exactly, else lit-lm's
self-contained custom code (``remote.py``); ``from_hf`` reads the built-in classes and lit-lm's own exports.
transformers is a development dependency: it is imported only inside these functions.
"""

import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch

from lit_lm.checkpoint import config_from_dict
from lit_lm.hf import gpt2
from lit_lm.hf.expressible import UnsupportedConfig, refusal
from lit_lm.hf.families import FAMILIES, FAMILY_BY_HF_CLASS, OUTPUT_BIAS_ALIASES, Family, family_for
from lit_lm.hf.remote import CAUSAL_CLASS, MASKED_CLASS, MODEL_TYPE, auto_map, load_model_code, write_model_code
from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM, TransformerConfig

ARCHITECTURES = ("auto", *FAMILIES, "gpt2", "custom")


def transformers_module():
    try:
        import transformers
    except ImportError as err:
        raise ImportError("lit_lm.hf needs the transformers package: pip install transformers") from err
    return transformers


def _resolve_family(config: TransformerConfig, architecture: str) -> Family | None:
    if architecture not in ARCHITECTURES or architecture == "gpt2":
        raise ValueError(f"an encoder's architecture must be one of {[a for a in ARCHITECTURES if a != 'gpt2']}, "
                         f"got {architecture!r}.")
    if architecture == "auto":
        return family_for(config)
    if architecture == "custom":
        return None
    family = FAMILIES[architecture]
    if problems := family.unsupported(config):
        raise refusal(family.hf_class, problems)
    return family


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape


# ---- lit-lm -> transformers ----
def to_hf(model: EncoderForMaskedLM | DecoderForCausalLM, architecture: str = "auto"):
    """The transformers model equal to ``model`` (same logits in eval mode).

    architecture: 'auto' (the built-in class if one represents the config exactly, else custom code), 'bert',
    'roberta', 'deberta-v2' (encoders), 'gpt2' (decoders), or 'custom' (lit-lm's own code, loaded with
    trust_remote_code).
    """
    if isinstance(model, DecoderForCausalLM):
        return _decoder_to_hf(model, architecture)
    family = _resolve_family(model.config, architecture)
    if family is None:
        return _to_custom(model)
    transformers = transformers_module()
    config_class = getattr(transformers, family.hf_class.replace("ForMaskedLM", "Config"))
    hf_config = config_class(**family.config_to_hf(model.config))
    hf_model = getattr(transformers, family.hf_class)(hf_config)
    ours = model.state_dict()
    names = family.weight_names(model.config, hf_config)
    if left := [n for n in ours if n not in names and not (n == "head.decoder.weight" and model.config.tie_embeddings)]:
        raise UnsupportedConfig(f"{family.hf_class} has no place for {left}; export with architecture 'custom'.")
    state = {}
    for name, hf_names in names.items():
        for hf_name, part in zip(hf_names, ours[name].chunk(len(hf_names), dim=0)):
            state[hf_name] = part
    state.update({alias: state[primary] for alias, primary in OUTPUT_BIAS_ALIASES.items() if primary in state})
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    hf_state = hf_model.state_dict()
    for name in missing:
        if name.endswith("token_type_embeddings.weight") and not model.config.type_vocab_size:
            with torch.no_grad():  # HF always adds a token-type embedding; a zero one adds nothing
                hf_model.get_parameter(name).zero_()
        elif not any(_same_storage(hf_state[name], hf_state[given]) for given in state):
            raise RuntimeError(f"to_hf: {family.hf_class}'s {name} has no lit-lm counterpart.")
    if unexpected:
        raise RuntimeError(f"to_hf: {family.hf_class} has no place for {unexpected}.")
    _check_same_logits(model, hf_model)
    return hf_model.train(model.training)


def _decoder_to_hf(model: DecoderForCausalLM, architecture: str):
    if architecture not in ("auto", "gpt2", "custom"):
        raise ValueError(f"a decoder's architecture must be 'auto', 'gpt2' or 'custom', got {architecture!r}.")
    problems = gpt2.unsupported(model.config)
    if architecture == "custom" or (architecture == "auto" and problems):
        return _to_custom(model)
    if problems:
        raise refusal(gpt2.HF_CLASS, problems)
    transformers = transformers_module()
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**gpt2.config_to_hf(model.config)))
    ours = model.state_dict()
    state = {hf_name: ours[name].t() if transposed else ours[name]
             for name, (hf_name, transposed) in gpt2.weight_names(model.config).items()}
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"to_hf: {gpt2.HF_CLASS} weights without a lit-lm counterpart: {missing}; "
                           f"lit-lm weights without a place: {unexpected}.")
    _check_same_logits(model, hf_model)
    return hf_model.train(model.training)


def _check_same_logits(model: EncoderForMaskedLM | DecoderForCausalLM, hf_model) -> None:
    """A last guard against a switch the family check does not know: the two must compute the same thing."""
    was_training = model.training
    model.eval(), hf_model.eval()
    config = model.config
    ids = torch.randint(0, config.vocab_size, (1, min(8, config.max_sequence_length)),
                        generator=torch.Generator().manual_seed(0))
    ids = ids.masked_fill(ids == config.pad_token_id, (config.pad_token_id + 1) % config.vocab_size)
    ids = ids.to(next(model.parameters()).device)
    with torch.no_grad():
        ours = model(ids).logits.float()
        gap = (ours - hf_model(input_ids=ids).logits.float()).abs().max().item()
    model.train(was_training)
    if not gap <= 1e-4 * max(1.0, ours.abs().max().item()):
        raise UnsupportedConfig(f"{type(hf_model).__name__} does not reproduce this model (logits differ by {gap:.2g});"
                                f" export with architecture 'custom'.")


def _to_custom(model: EncoderForMaskedLM | DecoderForCausalLM):
    transformers_module()
    with tempfile.TemporaryDirectory() as tmp:
        code = load_model_code(write_model_code(Path(tmp)).parent)
    causal = isinstance(model, DecoderForCausalLM)
    hf_config = code.LitLMConfig(lit_lm=asdict(model.config))
    hf_config.auto_map = auto_map(causal)
    hf_config.architectures = [CAUSAL_CLASS if causal else MASKED_CLASS]
    hf_model = getattr(code, hf_config.architectures[0])(hf_config)
    hf_model.model.load_state_dict(model.state_dict())
    return hf_model.train(model.training)


# ---- transformers -> lit-lm ----
def from_hf(hf_model) -> EncoderForMaskedLM | DecoderForCausalLM:
    """The lit-lm model equal to a transformers masked-LM or GPT-2 (same logits in eval mode)."""
    hf_config = hf_model.config
    if getattr(hf_config, "model_type", None) == MODEL_TYPE:
        causal = CAUSAL_CLASS in (getattr(hf_config, "architectures", None) or [])
        model = (DecoderForCausalLM if causal else EncoderForMaskedLM)(config_from_dict(hf_config.lit_lm))
        model.load_state_dict({k.removeprefix("model."): v for k, v in hf_model.state_dict().items()})
        return model.train(hf_model.training)
    if type(hf_model).__name__ == gpt2.HF_CLASS:
        return _gpt2_from_hf(hf_model)
    family = FAMILY_BY_HF_CLASS.get(type(hf_model).__name__)
    if family is None:
        raise UnsupportedConfig(f"from_hf takes {sorted([*FAMILY_BY_HF_CLASS, gpt2.HF_CLASS])} or a lit-lm export, "
                                f"got {type(hf_model).__name__}.")
    config = family.config_from_hf(hf_config)
    if family is FAMILIES["deberta-v2"] and not getattr(hf_config, "legacy", True):
        config = replace(config, tie_embeddings=True)  # the newer DeBERTa head always uses the word embeddings
    hf_state = hf_model.state_dict()
    state, used = {}, set()
    for name, hf_names in family.weight_names(config, hf_config).items():
        state[name] = torch.cat([hf_state[n] for n in hf_names]) if len(hf_names) > 1 else hf_state[hf_names[0]]
        used.update(hf_names)
    left = [n for n in hf_state if n not in used and not any(_same_storage(hf_state[n], hf_state[u]) for u in used)]
    left = [n for n in left if not _unused_by_design(n, config)]
    if left:
        raise UnsupportedConfig(f"from_hf: lit-lm has no place for {left}.")
    model = EncoderForMaskedLM(config)
    model.load_state_dict(state)
    return model.train(hf_model.training)


def _gpt2_from_hf(hf_model) -> DecoderForCausalLM:
    config = gpt2.config_from_hf(hf_model.config)
    hf_state = hf_model.state_dict()
    names = gpt2.weight_names(config)
    if left := sorted(set(hf_state) - {hf_name for hf_name, _ in names.values()}):
        raise UnsupportedConfig(f"from_hf: lit-lm has no place for {left}.")
    model = DecoderForCausalLM(config)
    model.load_state_dict({name: hf_state[hf_name].t() if transposed else hf_state[hf_name]
                           for name, (hf_name, transposed) in names.items()})
    return model.train(hf_model.training)


def _unused_by_design(name: str, config: TransformerConfig) -> bool:
    """HuggingFace weights that its own forward ignores for this config."""
    if name in OUTPUT_BIAS_ALIASES:  # when untied, HF's forward reads only the decoder's bias
        return True
    return config.relative_positions == "none" and ("rel_embeddings" in name or "encoder.LayerNorm" in name)
