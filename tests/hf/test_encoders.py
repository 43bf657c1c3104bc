"""HuggingFace interoperability: logits parity both ways, exported folders, pretrained starts."""

import ast
import random
import sys

import pytest
import torch

from lit_lm.checkpoint import Checkpoint
from lit_lm.hf import UnsupportedConfig, from_hf, load_pretrained, save_pretrained, to_hf
from lit_lm.hf.__main__ import main as hf_main
from lit_lm.hf.families import family_for
from lit_lm.hf.remote import CODE_FILE
from lit_lm.models import EncoderForMaskedLM, TransformerConfig
from lit_lm.modules import MaskedLMModule
from tests.conftest import ROOT, sentence

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
             max_position_embeddings=40, initializer_range=0.2)
BERT_CONFIGS = {
    "bert": dict(),
    "bert-relu-untied-3-types": dict(hidden_act="relu", tie_word_embeddings=False, type_vocab_size=3,
                                     layer_norm_eps=1e-5),
}
ROBERTA_CONFIGS = {
    "roberta": dict(pad_token_id=1, type_vocab_size=1, layer_norm_eps=1e-5),
    "roberta-gelu-tanh": dict(pad_token_id=1, type_vocab_size=1, hidden_act="gelu_new", num_attention_heads=2),
}
DEBERTA = dict(relative_attention=True, position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7)
DEBERTA_CONFIGS = {  # both share_att_key values, c2p only, p2c only, buckets on and off, nGiE on and off
    "v3-shared-buckets": dict(DEBERTA, share_att_key=True, pos_att_type="p2c|c2p", position_buckets=8,
                              norm_rel_ebd="layer_norm"),
    "separate-c2p-only-no-buckets": dict(DEBERTA, share_att_key=False, pos_att_type="c2p", max_relative_positions=12),
    "separate-p2c-only-buckets-ngie": dict(DEBERTA, share_att_key=False, pos_att_type="p2c", position_buckets=6,
                                           conv_kernel_size=3, conv_act="gelu"),
    "shared-both-no-buckets-ngie-groups-gelu-new": dict(DEBERTA, share_att_key=True, pos_att_type="c2p|p2c",
                                                        conv_kernel_size=3, conv_groups=4, conv_act="gelu_new",
                                                        norm_rel_ebd="layer_norm"),
    "v2-absolute-and-relative-token-types": dict(relative_attention=True, position_biased_input=True,
                                                 type_vocab_size=2, pos_att_type="c2p|p2c", share_att_key=False,
                                                 position_buckets=10, max_relative_positions=30),
    "newer-head-tanh-ngie": dict(DEBERTA, share_att_key=True, pos_att_type="p2c|c2p", position_buckets=8,
                                 conv_kernel_size=3, legacy=False),
    "no-relative-attention": dict(relative_attention=False, position_biased_input=True, type_vocab_size=0),
}
CASES = [("BertForMaskedLM", "BertConfig", k, v) for k, v in BERT_CONFIGS.items()] + \
        [("RobertaForMaskedLM", "RobertaConfig", k, v) for k, v in ROBERTA_CONFIGS.items()] + \
        [("DebertaV2ForMaskedLM", "DebertaV2Config", k, v) for k, v in DEBERTA_CONFIGS.items()]


ARCHITECTURE = {"BertForMaskedLM": "bert", "RobertaForMaskedLM": "roberta", "DebertaV2ForMaskedLM": "deberta-v2"}


def padded_batch(vocab: int, pad_id: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    mask[2, 6:] = 0
    return ids.masked_fill(mask == 0, pad_id), mask


@pytest.mark.parametrize("model_class, config_class, name, settings", CASES, ids=[c[2] for c in CASES])
def test_logits_match_huggingface_both_ways(model_class, config_class, name, settings):
    torch.manual_seed(0)
    hf_config = getattr(transformers, config_class)(**{**SMALL, **settings})
    hf = getattr(transformers, model_class)(hf_config).eval()
    ours = from_hf(hf).eval()
    ids, mask = padded_batch(hf_config.vocab_size, hf_config.pad_token_id)
    real = mask.bool()
    with torch.no_grad():
        reference = hf(input_ids=ids, attention_mask=mask).logits
        assert (ours(ids, attention_mask=mask).logits - reference)[real].abs().max() <= 1e-4
        back = to_hf(ours, ARCHITECTURE[model_class]).eval()  # and back again, into the same transformers class
        assert type(back).__name__ == model_class
        assert (back(input_ids=ids, attention_mask=mask).logits - reference)[real].abs().max() <= 1e-4
    if hf_config.type_vocab_size > 1:
        types = (torch.arange(24) >= 12).long().expand(3, -1)
        with torch.no_grad():
            got = ours(ids, attention_mask=mask, token_type_ids=types).logits
            want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        assert (got - want)[real].abs().max() <= 1e-4


def test_attention_maps_match_huggingface():
    torch.manual_seed(0)
    config = transformers.DebertaV2Config(**SMALL, **DEBERTA_CONFIGS["v3-shared-buckets"])
    hf = transformers.DebertaV2ForMaskedLM(config)
    hf.eval()
    ids, mask = padded_batch(64, 0)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
        got = from_hf(hf).eval()(ids, attention_mask=mask, output_attentions=True).attentions
    real = mask.bool()[:, None, :, None]  # padded query rows differ by design (HF attends nowhere from them)
    for ours, theirs in zip(got, want):
        assert ((ours - theirs) * real).abs().max() <= 1e-5


CRAMMED = dict(norm="rmsnorm", norm_placement="pre", final_norm=True, qkv_bias=False, bias=False, activation="swiglu",
               moe_experts=4, moe_top_k=2, moe_capacity_factor=4.0, talking_heads=True, qkv_conv_kernel_size=3,
               output_softmaxes=2, relative_positions="disentangled", position_embedding="none",
               position_buckets=8, share_att_key=True, conv_kernel_size=3, head_position_embedding=True)


def lit_config(**overrides) -> TransformerConfig:
    base = dict(vocab_size=200, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                max_position_embeddings=40, dropout=0.0, attention_dropout=0.0, initializer_range=0.2)
    return TransformerConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def wordpiece():
    from lit_lm.data.tokenizer import TokenizerConfig, train_tokenizer
    rng = random.Random(0)
    texts = [" ".join(sentence(rng) for _ in range(5)) for _ in range(300)]
    return train_tokenizer(texts, TokenizerConfig(kind="wordpiece", vocab_size=200))


def test_configs_without_a_builtin_class_are_named_and_refused_for_that_class():
    assert family_for(lit_config()).name == "bert"
    assert family_for(lit_config(position_offset=1, max_position_embeddings=42)).name == "roberta"
    assert family_for(lit_config(relative_positions="disentangled")).name == "deberta-v2"
    assert family_for(lit_config(**CRAMMED)) is None
    with pytest.raises(UnsupportedConfig, match="norm: rmsnorm.*norm_placement: pre"):
        to_hf(EncoderForMaskedLM(lit_config(norm="rmsnorm", norm_placement="pre", final_norm=True)), "bert")


def test_to_hf_refuses_a_builtin_class_that_would_compute_something_else(monkeypatch):
    import lit_lm.hf.convert as convert
    from lit_lm.hf.families import FAMILIES

    monkeypatch.setattr(convert, "_resolve_family", lambda config, architecture: FAMILIES["bert"])
    with pytest.raises(UnsupportedConfig, match="does not reproduce"):  # pre-LN has the same weights as post-LN
        to_hf(EncoderForMaskedLM(lit_config(norm_placement="pre")))
    with pytest.raises(UnsupportedConfig, match="no place for.*talking_heads"):
        to_hf(EncoderForMaskedLM(lit_config(talking_heads=True)))


def test_custom_code_export_loads_self_contained_with_the_same_logits_and_tokens(wordpiece, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = EncoderForMaskedLM(lit_config(**CRAMMED, vocab_size=wordpiece.get_vocab_size())).eval()
    folder = save_pretrained(model, tmp_path / "crammed", tokenizer=wordpiece)
    code = (folder / CODE_FILE).read_text()
    imported = [n.module or "" for n in ast.walk(ast.parse(code)) if isinstance(n, ast.ImportFrom)] + \
               [a.name for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Import) for a in n.names]
    assert not any(name.split(".")[0] == "lit_lm" for name in imported)
    for name in [m for m in sys.modules if m == "lit_lm" or m.startswith("lit_lm.")]:
        monkeypatch.setitem(sys.modules, name, None)  # any import of lit_lm from the folder's code now fails
    hf = transformers.AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    monkeypatch.undo()
    text = ["the quick cat sees the hidden garden.", "a lazy dog."]
    batch = tokenizer(text, padding=True, return_tensors="pt")
    assert batch["input_ids"][0].tolist() == wordpiece.encode(text[0]).ids
    with torch.no_grad():
        got = hf(**batch).logits
        want = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    real = batch["attention_mask"].bool()
    assert (got - want)[real].abs().max() <= 1e-5
    reloaded = load_pretrained(folder).eval()  # read directly: no code from the folder runs
    assert (reloaded(batch["input_ids"], attention_mask=batch["attention_mask"]).logits - want)[real].abs().max() == 0


def test_builtin_export_loads_without_custom_code(wordpiece, tmp_path):
    torch.manual_seed(0)
    model = EncoderForMaskedLM(lit_config(vocab_size=wordpiece.get_vocab_size())).eval()
    folder = save_pretrained(model, tmp_path / "bert", tokenizer=wordpiece)
    assert not (folder / CODE_FILE).exists()
    hf = transformers.AutoModelForMaskedLM.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert type(hf).__name__ == "BertForMaskedLM"
    batch = tokenizer(["the lazy dog sees [MASK]."], return_tensors="pt")
    assert tokenizer.mask_token_id == wordpiece.token_to_id("[MASK]")
    with torch.no_grad():
        diff = hf(**batch).logits - model(batch["input_ids"]).logits
    assert diff.abs().max() <= 1e-4
    with pytest.raises(FileExistsError, match="not empty"):
        save_pretrained(model, folder)


@pytest.mark.slow
def test_trained_checkpoint_exports_and_pretraining_restarts_from_the_export(corpus, tmp_path, monkeypatch):
    from lit_lm.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    tiny = ["--model.init_args.config.hidden_size", "32", "--model.init_args.config.num_layers", "1",
            "--model.init_args.config.num_heads", "2", "--model.init_args.config.intermediate_size", "64",
            "--data.init_args.tokenizer.vocab_size", "300", "--data.init_args.seq_length", "32",
            "--data.init_args.batch_size", "8", "--data.init_args.paths", f"[{corpus}]",
            "--data.init_args.split", "paragraph", "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    cli = main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *tiny, "--trainer.max_steps", "3"])
    store = cli.datamodule.store_dir
    checkpoint = tmp_path / "runs" / "quickstart" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    hf_main(["export", str(checkpoint), str(tmp_path / "export"), "--tokenizer", str(store)])

    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "export", trust_remote_code=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "export", trust_remote_code=True)
    ids = tokenizer("the careful teacher watches the masked river.", return_tensors="pt")["input_ids"]
    trained = cli.model.model.eval()
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - trained(ids).logits).abs().max() <= 1e-5

    # start pretraining again from the exported folder, with its tokenizer
    (tmp_path / "again").mkdir()
    monkeypatch.chdir(tmp_path / "again")
    again = main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *tiny, "--trainer.max_steps", "1",
                  "--model.init_args.init_from", str(tmp_path / "export"),
                  "--data.init_args.tokenizer.path", str(tmp_path / "export"),
                  "--model.init_args.config.num_layers", "3"])  # the export's architecture wins over the recipe's
    assert again.model.config.num_layers == 1 and again.model.config.sparse_prediction_rate == 0.25
    saved = Checkpoint.read(tmp_path / "again" / "runs" / "quickstart")  # what it saved is what it trained
    assert saved.config.num_layers == 1 and saved.model().config.num_layers == 1
    started = MaskedLMModule(again.model.config, init_from=str(tmp_path / "export"), seq_length=32,
                             special_token_ids=again.model.hparams.special_token_ids).model
    for name, value in started.state_dict().items():
        torch.testing.assert_close(value, trained.state_dict()[name])  # the export's weights, before training


def test_init_from_with_another_vocabulary_is_a_clear_error(tmp_path):
    folder = save_pretrained(EncoderForMaskedLM(lit_config()), tmp_path / "m")
    with pytest.raises(ValueError, match="vocabulary of 200 tokens but the tokenizer has 300.*data.tokenizer.path"):
        MaskedLMModule(lit_config(vocab_size=300), init_from=str(folder), seq_length=32, special_token_ids=[0])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        MaskedLMModule(lit_config(), init_from=str(tmp_path), seq_length=32, special_token_ids=[0])


def test_init_from_a_huggingface_bert_folder_keeps_the_recipe_training_switches(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(transformers.BertConfig(**SMALL))
    hf.save_pretrained(tmp_path / "bert")
    recipe = lit_config(vocab_size=64, hidden_size=64, dropout=0.0, sparse_prediction=True)
    module = MaskedLMModule(recipe, init_from=str(tmp_path / "bert"), seq_length=32, special_token_ids=[0, 1],
                            mask_token_id=4, mask_rate=0.2)
    config = module.model.config
    assert config.hidden_size == 32 and config.type_vocab_size == 2  # the checkpoint's architecture
    assert config.dropout == 0.0 and config.sparse_prediction and config.sparse_prediction_rate == 0.2  # the recipe's
    ids = torch.randint(5, 64, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(module.model.eval()(ids).logits, hf.eval()(input_ids=ids).logits,
                                   atol=1e-4, rtol=1e-4)
