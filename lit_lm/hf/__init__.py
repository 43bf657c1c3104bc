"""Interoperability with HuggingFace transformers: weights both ways, exported folders, pretrained starts.

- ``from_hf(hf_model)``: a transformers model (BertForMaskedLM, RobertaForMaskedLM, DebertaV2ForMaskedLM,
  GPT2LMHeadModel, or a lit-lm custom-code export) -> the equivalent lit-lm ``EncoderForMaskedLM`` or
  ``DecoderForCausalLM`` (``convert.py``).
- ``to_hf(model)``: the equivalent transformers model: the built-in class when one represents the config exactly
  (``expressible.py`` says which), otherwise lit-lm's self-contained custom code (``remote.py``, ``bundle.py``).
- ``save_pretrained`` / ``export_checkpoint``: a folder ``AutoModelForMaskedLM`` (encoders) or
  ``AutoModelForCausalLM`` (decoders) and ``AutoTokenizer`` load (``folders.py``).
- ``load_pretrained(folder)``: a local HuggingFace or lit-lm folder -> ``EncoderForMaskedLM`` (``init_from``).

Reading lit-lm's own checkpoints is ``lit_lm.checkpoint``'s. transformers is a development dependency: it is
imported only inside these functions.
"""

from lit_lm.hf.convert import ARCHITECTURES, from_hf, to_hf
from lit_lm.hf.expressible import UnsupportedConfig
from lit_lm.hf.folders import export_checkpoint, load_pretrained, save_pretrained

__all__ = ["from_hf", "to_hf", "save_pretrained", "load_pretrained", "export_checkpoint", "UnsupportedConfig",
           "ARCHITECTURES"]
