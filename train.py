"""Train, validate or test a lit-lm model: ``python train.py fit --config configs/quickstart.yaml``."""

from lit_lm.cli import run

if __name__ == "__main__":
    run()
