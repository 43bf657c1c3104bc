"""Interoperability with HuggingFace transformers: weights both ways, exported folders, pretrained starts.

- ``from_hf(hf_model)``: a transformers model (BertForMaskedLM, RobertaForMaskedLM, DebertaV2ForMaskedLM,
  GPT2LMHeadModel, or a lit-lm custom-code export) -> the equivalent lit-lm ``EncoderForMaskedLM`` or
  ``DecoderForCausalLM``.
- ``to_hf(model)``: the equivalent transformers model: the built-in class when one represents the config exactly,
  otherwise lit-lm's self-contained custom-code class (``remote.py``).
- ``save_pretrained`` / ``export_checkpoint``: a folder ``AutoModelForMaskedLM`` (encoders) or
  ``AutoModelForCausalLM`` (decoders) and ``AutoTokenizer`` load.
- ``load_pretrained(folder)``: a local HuggingFace or lit-lm folder -> ``EncoderForMaskedLM`` (``init_from``).

transformers is a development dependency: it is imported only inside these functions.
"""

import json
import os
import shutil
import tempfile
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from lit_lm.hf import gpt2
from lit_lm.hf.families import FAMILIES, FAMILY_BY_HF_CLASS, OUTPUT_BIAS_ALIASES, Family, UnsupportedConfig, family_for
from lit_lm.hf.remote import MODEL_TYPE, auto_map, load_model_code, write_model_code
from lit_lm.hf.tokenizer import read_tokenizer, save_tokenizer
from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM, TransformerConfig

__all__ = ["from_hf", "to_hf", "save_pretrained", "load_pretrained", "export_checkpoint", "UnsupportedConfig"]

ARCHITECTURES = ("auto", *FAMILIES, "gpt2", "custom")
CAUSAL_CLASS = "LitLMForCausalLM"  # the custom-code class of decoders (encoders: LitLMForMaskedLM)
# switches that change how a model trains, not its weights: a pretrained start keeps the recipe's
TRAINING_FIELDS = ("dropout", "attention_dropout", "sparse_prediction", "sparse_prediction_rate",
                   "moe_aux_loss_weight", "initializer_range")


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError("lit_lm.hf needs the transformers package: pip install transformers") from err
    return transformers


def _config_from_dict(values: dict) -> TransformerConfig:
    known = {f.name for f in fields(TransformerConfig)}
    return TransformerConfig(**{k: v for k, v in values.items() if k in known})


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
        raise UnsupportedConfig(f"{family.hf_class} cannot represent this config ({'; '.join(problems)}); "
                                f"use architecture 'auto' or 'custom' to export it with its own code.")
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
    transformers = _transformers()
    hf_config = getattr(transformers, family.hf_class.replace("ForMaskedLM", "Config"))(**family.config_to_hf(model.config))
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
        raise UnsupportedConfig(f"{gpt2.HF_CLASS} cannot represent this config ({'; '.join(problems)}); "
                                f"use architecture 'auto' or 'custom' to export it with its own code.")
    transformers = _transformers()
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
    _transformers()
    with tempfile.TemporaryDirectory() as tmp:
        code = load_model_code(write_model_code(Path(tmp)).parent)
    causal = isinstance(model, DecoderForCausalLM)
    hf_config = code.LitLMConfig(lit_lm=asdict(model.config))
    hf_config.auto_map = auto_map(causal)
    hf_config.architectures = [CAUSAL_CLASS if causal else "LitLMForMaskedLM"]
    hf_model = getattr(code, hf_config.architectures[0])(hf_config)
    hf_model.model.load_state_dict(model.state_dict())
    return hf_model.train(model.training)


# ---- transformers -> lit-lm ----
def from_hf(hf_model) -> EncoderForMaskedLM | DecoderForCausalLM:
    """The lit-lm model equal to a transformers masked-LM or GPT-2 (same logits in eval mode)."""
    hf_config = hf_model.config
    if getattr(hf_config, "model_type", None) == MODEL_TYPE:
        causal = CAUSAL_CLASS in (getattr(hf_config, "architectures", None) or [])
        model = (DecoderForCausalLM if causal else EncoderForMaskedLM)(_config_from_dict(hf_config.lit_lm))
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


# ---- folders ----
def _write_atomically(folder: Path, overwrite: bool, write) -> Path:
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; choose another folder or pass overwrite=True.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        write(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def save_pretrained(model: EncoderForMaskedLM | DecoderForCausalLM, folder: str | Path, tokenizer=None,
                    architecture: str = "auto", overwrite: bool = False) -> Path:
    """Write ``model`` (and its tokenizer: a ``tokenizers.Tokenizer``, a tokenizer.json, or a folder holding one)
    as a folder ``AutoModelForMaskedLM`` / ``AutoModelForCausalLM.from_pretrained`` loads (custom code needs
    ``trust_remote_code=True``) and ``AutoTokenizer.from_pretrained`` loads. A decoder's end-of-text token becomes
    its config's ``eos_token_id`` / ``bos_token_id``, where ``generate`` stops. Written in a temporary folder and
    renamed into place."""
    hf_model = to_hf(model, architecture)
    if tokenizer is not None and isinstance(model, DecoderForCausalLM):
        tokenizer = read_tokenizer(tokenizer)
        end_of_text = next((i for t in ("<|endoftext|>", "</s>") if (i := tokenizer.token_to_id(t)) is not None), None)
        for config in (hf_model.config, hf_model.generation_config):
            config.eos_token_id = config.bos_token_id = end_of_text

    def write(tmp: Path) -> None:
        hf_model.save_pretrained(tmp)
        if hf_model.config.model_type == MODEL_TYPE:
            write_model_code(tmp)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp, model_max_length=model.config.max_sequence_length)

    return _write_atomically(Path(folder), overwrite, write)


def load_pretrained(folder: str | Path, training_config: TransformerConfig | None = None) -> EncoderForMaskedLM:
    """A lit-lm model from a local folder: a lit-lm export (read directly, no code executed) or a HuggingFace
    BERT / RoBERTa / DeBERTa-v2 masked-LM folder (through transformers).

    With ``training_config`` (a recipe's model config), the pretrained architecture and weights are kept and the
    recipe's training switches (dropout, sparse prediction, ...) are applied; its vocabulary must match.
    """
    folder = Path(folder).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"init_from: {folder} has no config.json; point it at a HuggingFace model folder "
                                f"(for example one written by `python -m lit_lm.hf export`).")
    hf_config = json.loads(config_file.read_text())
    if hf_config.get("model_type") == MODEL_TYPE:
        model = EncoderForMaskedLM(_config_from_dict(hf_config["lit_lm"]))
        model.load_state_dict(_read_lit_lm_weights(folder, model))
    else:
        model = from_hf(_transformers().AutoModelForMaskedLM.from_pretrained(folder))
    if training_config is None:
        return model
    if training_config.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"init_from: the model in {folder} has a vocabulary of {model.config.vocab_size} tokens but the tokenizer "
            f"has {training_config.vocab_size}; set data.tokenizer.path to the same folder to use its tokenizer."
        )
    switches = {name: getattr(training_config, name) for name in TRAINING_FIELDS}
    adapted = EncoderForMaskedLM(replace(model.config, **switches))
    adapted.load_state_dict(model.state_dict())
    return adapted


def _read_lit_lm_weights(folder: Path, model: EncoderForMaskedLM) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))  # one file, or shards of a large model
    if not files:
        raise FileNotFoundError(f"init_from: {folder} has no *.safetensors weights.")
    state = {k.removeprefix("model."): v for file in files for k, v in load_file(str(file)).items()}
    if model.config.tie_embeddings:  # saved once, under one of the two names
        state.setdefault("head.decoder.weight", state.get("encoder.token_embedding.weight"))
        state.setdefault("encoder.token_embedding.weight", state.get("head.decoder.weight"))
    return state


def read_checkpoint(path: str | Path) -> EncoderForMaskedLM | DecoderForCausalLM:
    """The model inside a lit-lm Lightning checkpoint (``MaskedLMModule`` or ``CausalLMModule``: config in the
    hyperparameters)."""
    return model_from_checkpoint(load_checkpoint_file(path), path)


def load_checkpoint_file(path: str | Path) -> dict:
    """A Lightning checkpoint's contents, on the CPU."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; runs write theirs to "
                                f"runs/<recipe>/logs/version_0/checkpoints/last.ckpt.")
    # weights_only=False: Lightning stores the hyperparameters as Python objects; this is the user's own run
    return torch.load(path, map_location="cpu", weights_only=False)


def model_from_checkpoint(checkpoint: dict, path: str | Path) -> EncoderForMaskedLM | DecoderForCausalLM:
    """The model (eval mode) of a loaded checkpoint; ``path`` only names it in errors."""
    hyper_parameters = checkpoint.get("hyper_parameters", {})
    config = hyper_parameters.get("config")
    if config is None:
        raise ValueError(f"{path} holds no model config in its hyperparameters; is it a lit-lm checkpoint?")
    config = config if isinstance(config, TransformerConfig) else _config_from_dict(dict(config))
    causal = any(k.startswith("model.decoder.") for k in checkpoint["state_dict"])  # CausalLMModule
    model = (DecoderForCausalLM if causal else EncoderForMaskedLM)(config)
    model.load_state_dict({k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()
                           if k.startswith("model.")})
    return model.eval()


def export_checkpoint(checkpoint: str | Path, folder: str | Path, tokenizer=None, architecture: str = "auto",
                      overwrite: bool = False) -> Path:
    """A trained lit-lm checkpoint -> a HuggingFace folder with its tokenizer (see ``save_pretrained``). Without
    ``tokenizer``, the one the checkpoint holds (causal-LM runs keep theirs)."""
    loaded = load_checkpoint_file(checkpoint)
    if tokenizer is None:
        if "tokenizer" not in loaded:
            raise ValueError(f"{checkpoint} holds no tokenizer; pass the one the run used (--tokenizer).")
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(loaded["tokenizer"])
    return save_pretrained(model_from_checkpoint(loaded, checkpoint), folder, tokenizer, architecture, overwrite)
