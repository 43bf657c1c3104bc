"""CausalLMModule's init_from: a decoder continued from a lit-lm checkpoint, its export or a HuggingFace GPT-2 folder,
with the source's architecture and exact weights, the source's tokenizer required of the data, a fresh optimizer, and
--ckpt_path last still resuming; init_from unset changes nothing."""

import csv
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lit_lm.cli import LitLMCLI, main, user_error
from lit_lm.data.tokenizer import TokenizerConfig, TokenizerError
from lit_lm.hf import save_pretrained
from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM
from lit_lm.modules import CausalLMModule
from lit_lm.pretrained import PretrainedSourceError, load_pretrained_source
from tests.conftest import ROOT, InterruptAt, tiny_tokenizer
from tests.models.helpers import tiny
from tests.models.test_decoder import GPT2
from tests.test_checkpoint import save_run_checkpoint
from tests.test_recipes import TINY

SOURCES = ["checkpoint", "run-folder", "export", "gpt2-folder"]


def pretrained(kind: str, folder: Path, tokenizer) -> tuple[Path, torch.nn.Module]:
    """A tiny pretrained decoder written as ``kind``, and the model that must give the same logits."""
    torch.manual_seed(0)
    if kind == "gpt2-folder":  # made with transformers itself
        transformers = pytest.importorskip("transformers")
        config = transformers.GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_embd=32, n_layer=2, n_head=4,
                                         n_positions=32, initializer_range=0.2)
        hf = transformers.GPT2LMHeadModel(config).eval()
        hf.save_pretrained(folder)
        tokenizer.save(str(folder / "tokenizer.json"))
        return folder, lambda ids: hf(input_ids=ids).logits
    model = DecoderForCausalLM(tiny(**GPT2, vocab_size=tokenizer.get_vocab_size(), initializer_range=0.2)).eval()
    if kind == "export":
        return save_pretrained(model, folder, tokenizer=tokenizer), lambda ids: model(ids).logits
    ckpt = save_run_checkpoint(folder / "logs" / "version_0" / "checkpoints" / "last.ckpt", model, tokenizer)
    return (ckpt if kind == "checkpoint" else folder), lambda ids: model(ids).logits


# the recipe's config: another shape than the source's, and dropout (a training switch, which the recipe keeps)
RECIPE = tiny(**GPT2, hidden_size=64, num_layers=3, dropout=0.1, attention_dropout=0.1)


@pytest.mark.parametrize("kind", SOURCES)
def test_the_module_starts_with_the_source_architecture_and_exactly_its_weights(kind, tmp_path, gpt_tokenizer):
    path, source_logits = pretrained(kind, tmp_path / "source", gpt_tokenizer)
    with pytest.warns(UserWarning, match=r"init_from: .*source.* sets the architecture, overriding model.init_args."
                                         r"config's hidden_size: 64 -> 32, num_layers: 3 -> 2.* \(the recipe's value"):
        lm = CausalLMModule(RECIPE, seq_length=16, eos_token_id=0, init_from=str(path))
    assert (lm.config.hidden_size, lm.config.num_layers) == (32, 2)
    assert (lm.config.dropout, lm.config.attention_dropout) == (0.1, 0.1)
    assert lm.hparams["config"]["hidden_size"] == 32 and "init_from" not in lm.hparams  # reloads without the source
    ids = torch.tensor([gpt_tokenizer.encode("the quick cat sees the dog.").ids])
    lm.eval()
    with torch.no_grad():
        got, want = lm(ids).logits, source_logits(ids)
    if kind == "gpt2-folder":  # through from_hf: GPT-2's kernels add in another order
        assert (got - want).abs().max() <= 1e-5
        assert torch.equal(got, load_pretrained_source(path).model(ids).logits)
    else:
        assert torch.equal(got, want)
    optimizer = lm.configure_optimizers()
    assert not optimizer.state  # AdamW starts fresh: no moments, no step count


def test_the_data_tokenizer_must_be_the_source_one(tmp_path, gpt_tokenizer):
    path, _ = pretrained("export", tmp_path / "source", gpt_tokenizer)
    lm = CausalLMModule(RECIPE, seq_length=16, init_from=str(path))
    lm.check_data_tokenizer(SimpleNamespace(tokenizer=gpt_tokenizer))
    lm.check_data_tokenizer(None)  # plain dataloaders: nothing to compare
    other = tiny_tokenizer("byte_bpe", gpt_tokenizer.get_vocab_size() - 10)
    with pytest.raises(TokenizerError, match=r"data.init_args.tokenizer: the data's tokenizer \(270 tokens\) is not "
                                             r"the one init_from was trained with .* point --data.init_args.tokenizer"
                                             r".path at init_from's tokenizer"):
        lm.check_data_tokenizer(SimpleNamespace(tokenizer=other))


def test_a_source_without_tokenizer_needs_the_data_given_one(tmp_path, gpt_tokenizer):
    model = DecoderForCausalLM(tiny(**GPT2, vocab_size=gpt_tokenizer.get_vocab_size()))
    lm = CausalLMModule(RECIPE, seq_length=16, init_from=str(save_run_checkpoint(tmp_path / "old.ckpt", model)))
    with pytest.raises(TokenizerError, match="holds no tokenizer, and the data trains its own"):
        lm.check_data_tokenizer(SimpleNamespace(tokenizer=gpt_tokenizer, tokenizer_config=TokenizerConfig()))
    given = TokenizerConfig(path="tokenizer.json")
    lm.check_data_tokenizer(SimpleNamespace(tokenizer=gpt_tokenizer, tokenizer_config=given))
    with pytest.raises(TokenizerError, match="its 330 tokens exceed the 280 of init_from's model"):
        lm.check_data_tokenizer(SimpleNamespace(tokenizer=tiny_tokenizer("byte_bpe", 330), tokenizer_config=given))


def test_bad_sources_are_one_clear_error(tmp_path, gpt_tokenizer):
    with pytest.raises(PretrainedSourceError, match="model.init_args.init_from: '.*nowhere' does not exist"):
        CausalLMModule(RECIPE, init_from=str(tmp_path / "nowhere"))
    encoder = EncoderForMaskedLM(tiny(vocab_size=gpt_tokenizer.get_vocab_size()))
    with pytest.raises(PretrainedSourceError, match=r"init_from: .*mlm.ckpt is an encoder \(masked-LM\) model; a "
                                                    r"causal LM continues a decoder"):
        CausalLMModule(RECIPE, init_from=str(save_run_checkpoint(tmp_path / "mlm.ckpt", encoder)))


def test_without_init_from_nothing_changes():
    torch.manual_seed(0)
    lm = CausalLMModule(RECIPE, seq_length=16)
    torch.manual_seed(0)
    plain = DecoderForCausalLM(RECIPE)
    assert all(torch.equal(value, plain.state_dict()[name]) for name, value in lm.model.state_dict().items())
    assert "init_from" not in lm.hparams and lm.hparams["config"] is RECIPE


def losses(root: Path) -> list[float]:
    with open(root / "logs" / "version_0" / "metrics.csv") as f:
        return [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]


@pytest.mark.slow
def test_continuing_a_decoder_through_train_py(corpus, tmp_path, monkeypatch):
    """A tiny decoder trained 40 steps, then continued from its run folder and from its GPT-2 export: each run's
    first loss is the source's level, not a random model's; the optimizer starts fresh; --ckpt_path last resumes."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])

    def args(root: str, steps: int, *extra: str) -> list[str]:
        return ["--config", str(ROOT / "configs" / "quickstart-decoder.yaml"), *TINY,
                "--data.init_args.paths", f"[{corpus}]", "--data.init_args.batch_size", "8",
                "--model.init_args.config.qkv_bias", "true",  # GPT-2 expressible: the export below is a gpt2
                "--trainer.precision", "32-true", "--trainer.limit_val_batches", "0",
                "--trainer.callbacks.TextSamples=null", "--trainer.callbacks.ThroughputMFU=null",
                "--trainer.default_root_dir", root, "--trainer.max_steps", str(steps), *extra]

    def train(root: str, steps: int, *extra: str) -> LitLMCLI:
        return main(["fit", *args(root, steps, *extra)])

    train("source", 40)
    source = losses(tmp_path / "source")
    continued = LitLMCLI(args=args("continued", 5, "--model.init_args.init_from", "source"), run=False)
    continued.trainer.callbacks.append(InterruptAt(step=3))
    with pytest.raises(SystemExit):  # Ctrl-C at step 3: last.ckpt saved
        continued.trainer.fit(continued.model, datamodule=continued.datamodule)
    first = losses(tmp_path / "continued")[0]
    assert first < source[0] - 1.0 and abs(first - sum(source[-5:]) / 5) < 0.3, (source, first)
    assert {int(state["step"]) for state in continued.trainer.optimizers[0].state.values()} == {3}  # fresh AdamW

    resumed = train("continued", 5, "--model.init_args.init_from", "source", "--ckpt_path", "last")
    assert resumed.trainer.global_step == 5  # the checkpoint's weights, optimizer and step, not the source's
    assert {int(state["step"]) for state in resumed.trainer.optimizers[0].state.values()} == {5}

    folder = save_pretrained(resumed.model.model, tmp_path / "gpt2", resumed.model.run_tokenizer(),
                             architecture="gpt2")
    assert '"model_type": "gpt2"' in (folder / "config.json").read_text()
    train("from-gpt2", 2, "--model.init_args.init_from", str(folder), "--data.init_args.tokenizer.path", str(folder))
    assert abs(losses(tmp_path / "from-gpt2")[0] - sum(source[-5:]) / 5) < 0.3

    with pytest.raises(TokenizerError, match="not the one init_from was trained with") as error:  # another one
        train("bad", 2, "--model.init_args.init_from", "source", "--data.init_args.tokenizer.vocab_size", "280")
    assert user_error(error.value) is error.value  # train.py prints it as one line, exit status 2
