"""Starting a fine-tune from any pretrained source: lit-lm checkpoints, lit_lm.hf exports, HuggingFace folders."""

import json
from types import SimpleNamespace

import pytest
import torch

from lit_lm.hf import save_pretrained
from lit_lm.hf.remote import CODE_FILE
from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM
from lit_lm.modules import MaskedLMModule
from lit_lm.pretrained import PretrainedSourceError, load_pretrained_source
from tests.models.helpers import tiny
from tests.models.test_decoder import GPT2
from tests.test_checkpoint import save_run_checkpoint

CUSTOM = dict(norm="rmsnorm", bias=False, qkv_bias=False)  # no built-in HuggingFace class: exported as custom code




def encoder(tokenizer, **switches) -> EncoderForMaskedLM:
    torch.manual_seed(0)
    return EncoderForMaskedLM(tiny(vocab_size=tokenizer.get_vocab_size(), num_layers=1, **switches)).eval()


def decoder(tokenizer, **switches) -> DecoderForCausalLM:
    torch.manual_seed(0)
    return DecoderForCausalLM(tiny(**GPT2, vocab_size=tokenizer.get_vocab_size(), num_layers=1, **switches)).eval()


def assert_same_weights(loaded, model) -> None:
    assert type(loaded) is type(model) and loaded.config == model.config
    want = model.state_dict()
    assert loaded.state_dict().keys() == want.keys()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, want[name]), name


@pytest.mark.parametrize("causal", [False, True], ids=["masked-lm", "causal-lm"])
def test_a_lit_lm_checkpoint_and_its_run_folder_give_the_model_and_its_stored_tokenizer(tmp_path, causal,
                                                                                        bert_tokenizer, gpt_tokenizer):
    tokenizer = gpt_tokenizer if causal else bert_tokenizer
    model = decoder(tokenizer) if causal else encoder(tokenizer)
    path = save_run_checkpoint(tmp_path / "run" / "logs" / "version_0" / "checkpoints" / "last.ckpt", model,
                               tokenizer)
    for given in (path, tmp_path / "run"):
        source = load_pretrained_source(str(given))
        assert source.causal == causal and source.config == model.config and str(path) in source.source
        assert_same_weights(source.model, model)
        assert source.tokenizer.to_str() == tokenizer.to_str()
    no_tokenizer = save_run_checkpoint(tmp_path / "old.ckpt", model)
    assert load_pretrained_source(no_tokenizer).tokenizer is None


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
@pytest.mark.parametrize("switches", [{}, CUSTOM], ids=["builtin", "custom-code"])
def test_a_lit_lm_hf_export_gives_back_the_same_weights_and_tokenizer(tmp_path, causal, switches, bert_tokenizer,
                                                                      gpt_tokenizer):
    tokenizer = gpt_tokenizer if causal else bert_tokenizer
    model = decoder(tokenizer, **switches) if causal else encoder(tokenizer, **switches)
    folder = save_pretrained(model, tmp_path / "export", tokenizer=tokenizer)
    assert (folder / CODE_FILE).exists() == bool(switches)
    (folder / CODE_FILE).unlink(missing_ok=True)  # a custom export is read directly: its code never runs
    source = load_pretrained_source(folder)
    assert source.causal == causal
    assert_same_weights(source.model, model)
    assert source.tokenizer.encode("the cat sees the dog.").ids == tokenizer.encode("the cat sees the dog.").ids


def test_a_huggingface_bert_folder_loads_through_transformers(tmp_path, bert_tokenizer):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=bert_tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=32)
    hf = transformers.BertForMaskedLM(config).eval()
    hf.save_pretrained(tmp_path / "bert")
    bert_tokenizer.save(str(tmp_path / "bert" / "tokenizer.json"))
    source = load_pretrained_source(tmp_path / "bert")
    assert not source.causal and source.config.hidden_size == 32 and "bert" in source.source
    assert torch.equal(source.model.body.token_embedding.weight, hf.bert.embeddings.word_embeddings.weight)
    assert torch.equal(source.model.body.blocks[0].ffn.up.weight, hf.bert.encoder.layer[0].intermediate.dense.weight)
    ids = torch.tensor([bert_tokenizer.encode("the cat sees the dog.").ids])
    with torch.no_grad():
        assert torch.allclose(source.model(ids).logits, hf(input_ids=ids).logits, atol=1e-5)
    assert source.tokenizer.to_str() == bert_tokenizer.to_str()


def test_a_huggingface_gpt2_folder_loads_as_a_decoder(tmp_path, gpt_tokenizer):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=gpt_tokenizer.get_vocab_size(), n_embd=32, n_layer=1, n_head=4,
                                     n_positions=32)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path / "gpt2")
    gpt_tokenizer.save(str(tmp_path / "gpt2" / "tokenizer.json"))
    source = load_pretrained_source(tmp_path / "gpt2")
    assert source.causal and isinstance(source.model, DecoderForCausalLM)
    assert torch.equal(source.model.body.token_embedding.weight, hf.transformer.wte.weight)
    ids = torch.tensor([gpt_tokenizer.encode("the cat sees the dog.").ids])
    with torch.no_grad():
        assert torch.allclose(source.model(ids).logits, hf(input_ids=ids).logits, atol=1e-5)
    assert source.tokenizer is not None


def test_what_cannot_be_started_from_is_one_error_naming_the_setting(tmp_path, bert_tokenizer):
    with pytest.raises(PretrainedSourceError, match="model.init_args.init_from: '.*nowhere' does not exist; pass a "
                                                    "lit-lm checkpoint"):
        load_pretrained_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedSourceError, match="init_from: .*empty holds neither a config.json .* nor a last"):
        load_pretrained_source(tmp_path / "empty")
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(PretrainedSourceError, match="init_from: .*t5 holds a 't5' model; pass"):
        load_pretrained_source(tmp_path / "t5")
    export = save_pretrained(encoder(bert_tokenizer, **CUSTOM), tmp_path / "export", tokenizer=bert_tokenizer)
    for weights in export.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(PretrainedSourceError, match="init_from: cannot read the lit-lm export .*no .*safetensors"):
        load_pretrained_source(export)
    (tmp_path / "noise.ckpt").write_bytes(b"noise")
    with pytest.raises(PretrainedSourceError, match="init_from: .*noise.ckpt is not a readable checkpoint"):
        load_pretrained_source(tmp_path / "noise.ckpt")
    classifier = save_run_checkpoint(tmp_path / "glue.ckpt", encoder(bert_tokenizer))
    contents = torch.load(classifier, weights_only=False)
    contents["hyper_parameters"]["num_labels"] = 2
    torch.save(contents, classifier)
    with pytest.raises(PretrainedSourceError, match="fine-tuned classifier's checkpoint"):
        load_pretrained_source(classifier)


def test_a_masked_lm_checkpoint_keeps_the_run_tokenizer_too(bert_tokenizer):
    lm = MaskedLMModule(tiny(vocab_size=bert_tokenizer.get_vocab_size()), seq_length=16)
    lm._trainer = SimpleNamespace(datamodule=SimpleNamespace(tokenizer=bert_tokenizer))
    checkpoint = {}
    lm.on_save_checkpoint(checkpoint)
    assert checkpoint["tokenizer"] == bert_tokenizer.to_str() and "run_settings" in checkpoint
