"""LightningModules: pretraining objectives and fine-tuning wrapped around the pure-torch models."""

from lit_lm.modules.causal_lm import CausalLMModule
from lit_lm.modules.classification import METRICS, SequenceClassificationModule
from lit_lm.modules.masked_lm import MaskedLMModule
from lit_lm.modules.optim import OptimizerConfig
from lit_lm.modules.pretraining import PretrainingModule
from lit_lm.modules.replaced_token import ReplacedTokenDetectionModule

__all__ = ["CausalLMModule", "MaskedLMModule", "OptimizerConfig", "PretrainingModule", "ReplacedTokenDetectionModule",
           "SequenceClassificationModule", "METRICS"]
