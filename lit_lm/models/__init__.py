"""Pure-torch models: importable and testable without Lightning."""

from lit_lm.models.config import TransformerConfig
from lit_lm.models.decoder import Decoder, DecoderForCausalLM
from lit_lm.models.encoder import Encoder, EncoderForMaskedLM
from lit_lm.models.output import LMOutput

__all__ = ["TransformerConfig", "Encoder", "EncoderForMaskedLM", "Decoder", "DecoderForCausalLM", "LMOutput"]
