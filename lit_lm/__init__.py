"""lit-lm: pretrain BERT/RoBERTa/DeBERTa encoders and GPT decoders on a small, fixed compute budget."""

__version__ = "0.1.0"
