"""TextSamples: when it samples, what it asks the generator for, and where the samples go."""

from types import SimpleNamespace

import pytest
import torch

from lit_lm.callbacks import TextSamples
from lit_lm.callbacks import samples as samples_module


class RecordingGenerate:
    """Stands for lit_lm.generate.generate_text: keeps each call's arguments, answers ``<prompt>+<n>``."""

    def __init__(self, monkeypatch) -> None:
        self.calls = []
        monkeypatch.setattr(samples_module, "generate_text", self)

    def __call__(self, model, tokenizer, prompt, max_new_tokens, **kwargs):
        self.calls.append(dict(model=model, tokenizer=tokenizer, prompt=prompt, max_new_tokens=max_new_tokens,
                               seed=kwargs.pop("generator").initial_seed(), **kwargs))
        return f"{prompt}+{len(self.calls)}"


class FolderLogger:
    def __init__(self, log_dir) -> None:
        self.log_dir = str(log_dir)


def setting(step: int, loggers=(), tokenizer="the tokenizer", eos_token_id=None):
    model = torch.nn.Linear(2, 2)
    module = SimpleNamespace(model=model, hparams={"eos_token_id": eos_token_id} if eos_token_id else {})
    trainer = SimpleNamespace(global_step=step, loggers=list(loggers), datamodule=SimpleNamespace(tokenizer=tokenizer))
    return trainer, module


def test_the_defaults_sample_every_200_steps_one_new_document_with_the_recipes_settings(monkeypatch):
    """The decoder recipes take TextSamples' defaults: 32 new tokens at temperature 0.8 among the top 50, seed 0,
    continuing '' (a new document)."""
    generate = RecordingGenerate(monkeypatch)
    callback = TextSamples()
    _, module = setting(0)
    for step in (0, 199, 200, 200, 201, 400):  # step 0 never; 200 once, however many micro-batches end there
        trainer, _ = setting(step)
        callback.on_train_batch_end(trainer, module, None, None, 0)
    assert [call["prompt"] for call in generate.calls] == ["", ""]
    assert generate.calls[0] == dict(model=module.model, tokenizer="the tokenizer", prompt="", max_new_tokens=32,
                                     seed=0, eos_token_id=None, temperature=0.8, top_k=50, top_p=None)
    assert callback.rows == [[200, "", "+1"], [400, "", "+2"]]


def test_its_settings_reach_the_generator_and_every_prompt_is_continued(monkeypatch, tmp_path):
    generate = RecordingGenerate(monkeypatch)
    callback = TextSamples(every_n_steps=1, prompts=("Once", "The list"), max_new_tokens=5, temperature=0.0,
                           top_k=None, top_p=0.9, seed=7)
    trainer, module = setting(1, loggers=[FolderLogger(tmp_path / "version_0")], eos_token_id=3)
    callback.on_train_batch_end(trainer, module, None, None, 0)
    assert [(c["prompt"], c["max_new_tokens"], c["seed"], c["eos_token_id"], c["temperature"], c["top_k"],
             c["top_p"]) for c in generate.calls] == [("Once", 5, 7, 3, 0.0, None, 0.9),
                                                      ("The list", 5, 7, 3, 0.0, None, 0.9)]
    assert callback.rows == [[1, "Once", "Once+1"], [1, "The list", "The list+2"]]
    assert (tmp_path / "version_0" / "samples.txt").read_text() == (
        "--- step 1 | prompt 'Once'\nOnce+1\n--- step 1 | prompt 'The list'\nThe list+2\n")


def test_training_ends_with_a_sample_unless_its_last_step_just_had_one(monkeypatch):
    generate = RecordingGenerate(monkeypatch)
    callback = TextSamples(every_n_steps=5)
    trainer, module = setting(5)
    callback.on_train_batch_end(trainer, module, None, None, 0)
    callback.on_train_end(trainer, module)  # step 5 was just sampled
    assert len(generate.calls) == 1
    trainer, module = setting(7)
    callback.on_train_end(trainer, module)
    assert len(generate.calls) == 2 and callback.rows[-1][0] == 7


@pytest.mark.parametrize("settings", [dict(every_n_steps=0), dict(max_new_tokens=0)])
def test_steps_and_tokens_below_one_are_refused(settings):
    with pytest.raises(ValueError, match="TextSamples: every_n_steps and max_new_tokens must be at least 1"):
        TextSamples(**settings)


def test_one_step_and_one_token_are_allowed():
    callback = TextSamples(every_n_steps=1, max_new_tokens=1)
    assert callback.every_n_steps == callback.max_new_tokens == 1


def test_a_datamodule_without_a_tokenizer_is_refused(monkeypatch):
    RecordingGenerate(monkeypatch)
    trainer, module = setting(1, tokenizer=None)
    with pytest.raises(ValueError, match="TextSamples needs a datamodule with a tokenizer"):
        TextSamples(every_n_steps=1).on_train_batch_end(trainer, module, None, None, 0)
