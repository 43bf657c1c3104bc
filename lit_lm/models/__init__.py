"""Pure-torch models: importable and testable without Lightning."""

from lit_lm.models.config import TransformerConfig
from lit_lm.models.output import IGNORE_INDEX, LMOutput
from lit_lm.models.transformer import DecoderForCausalLM, EncoderForMaskedLM, Transformer

__all__ = ["TransformerConfig", "Transformer", "EncoderForMaskedLM", "DecoderForCausalLM", "LMOutput", "IGNORE_INDEX"]
