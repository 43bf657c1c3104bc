"""SequenceClassifier: pooling, the head's losses, padding invariance, and loading a pretrained body."""

import pytest
import torch
import torch.nn.functional as F

from lit_lm.models import DecoderForCausalLM, EncoderForMaskedLM
from lit_lm.models.classifier import SequenceClassifier, pool
from tests.models.helpers import padded, tiny
from tests.models.test_decoder import GPT2


def test_pooling_reads_the_first_the_mean_of_the_real_or_the_last_real_token():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert torch.equal(pool(hidden, mask, "first"), hidden[:, 0])
    assert torch.equal(pool(hidden, mask, "mean"), torch.stack([hidden[0, :3].mean(0), hidden[1, :2].mean(0)]))
    assert torch.equal(pool(hidden, mask, "last"), torch.stack([hidden[0, 2], hidden[1, 1]]))
    assert torch.equal(pool(hidden, None, "last"), hidden[:, -1])
    assert torch.equal(pool(hidden, None, "mean"), hidden.mean(1))


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
def test_logits_losses_and_gradients(causal):
    torch.manual_seed(0)
    config = tiny(**GPT2) if causal else tiny()
    ids = torch.randint(5, 50, (3, 7))
    classifier = SequenceClassifier(config, num_labels=3, causal=causal, pooling="last" if causal else "first")
    labels = torch.tensor([0, 2, 1])
    out = classifier(ids, labels=labels)
    assert out.logits.shape == (3, 3) and out.pooled.shape == (3, 32) and out.aux_loss is None
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))
    out.loss.backward()
    assert classifier.body.token_embedding.weight.grad.abs().sum() > 0 and classifier.head.out.weight.grad is not None
    assert hasattr(classifier, "decoder" if causal else "encoder")

    regression = SequenceClassifier(config, num_labels=1, causal=causal)
    scores = torch.tensor([0.5, 4.0, 2.5])
    out = regression(ids, labels=scores)
    assert out.logits.shape == (3, 1)
    assert torch.allclose(out.loss, ((out.logits[:, 0] - scores) ** 2).mean())
    assert regression(ids).loss is None


def test_padding_changes_no_row_s_logits_for_decoder_last_token_and_encoder_mean_pooling():
    real, padded_ids, garbage, mask = padded()
    for causal, pooling in ((True, "last"), (False, "mean"), (False, "first")):
        torch.manual_seed(0)
        classifier = SequenceClassifier(tiny(**GPT2) if causal else tiny(), 2, causal, pooling).eval()
        with torch.no_grad():
            alone = classifier(real).logits
            assert torch.allclose(classifier(padded_ids, mask).logits, alone, atol=1e-5), pooling
            assert torch.allclose(classifier(garbage, mask).logits, alone, atol=1e-5), pooling
            if pooling == "last":  # the padding is really skipped: the last position gives something else
                assert not torch.allclose(classifier(garbage).logits, alone, atol=1e-3)


def test_token_types_count_only_with_two_or_more_types():
    ids, types = torch.randint(5, 50, (2, 6)), torch.tensor([[0, 0, 0, 1, 1, 1]] * 2)
    for type_vocab_size, matters in ((2, True), (1, False), (0, False)):
        torch.manual_seed(0)
        classifier = SequenceClassifier(tiny(type_vocab_size=type_vocab_size), 2).eval()
        with torch.no_grad():
            same = torch.allclose(classifier(ids, token_type_ids=types).logits, classifier(ids).logits)
        assert same != matters, type_vocab_size


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
def test_load_body_copies_a_language_model_s_body(causal):
    config = tiny(**GPT2) if causal else tiny()
    torch.manual_seed(1)
    lm = (DecoderForCausalLM if causal else EncoderForMaskedLM)(config)
    torch.manual_seed(2)
    classifier = SequenceClassifier(config, 2, causal)
    assert not torch.equal(classifier.body.token_embedding.weight, lm.body.token_embedding.weight)
    head_before = classifier.head.out.weight.clone()
    lightning_state = {f"model.{name}": value for name, value in lm.state_dict().items()}
    for source in (lm, lm.state_dict(), lm.body.state_dict(), lightning_state):
        classifier.load_body(source)
        for name, value in lm.body.state_dict().items():
            assert torch.equal(classifier.body.state_dict()[name], value), name
    assert torch.equal(classifier.head.out.weight, head_before)


def test_load_body_names_what_does_not_fit():
    classifier = SequenceClassifier(tiny(), 2)
    with pytest.raises(ValueError, match="pretrained encoder does not fit .*misshapen: .*token_embedding"):
        classifier.load_body(EncoderForMaskedLM(tiny(vocab_size=60)))
    with pytest.raises(ValueError, match="missing: .*blocks.1.*encoder or decoder"):
        classifier.load_body(EncoderForMaskedLM(tiny(num_layers=1)))
    with pytest.raises(ValueError, match="unexpected: "):
        SequenceClassifier(tiny(num_layers=1), 2).load_body(EncoderForMaskedLM(tiny()))


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="model.num_labels must be at least 1"):
        SequenceClassifier(tiny(), 0)
    with pytest.raises(ValueError, match="model.pooling must be one of"):
        SequenceClassifier(tiny(), 2, pooling="max")
