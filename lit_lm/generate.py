"""Text generation from a causal LM: greedy, temperature, top-k and top-p (nucleus) sampling, with a KV cache.

From Python::

    from lit_lm.checkpoint import load_causal_lm
    from lit_lm.generate import generate_text
    model, tokenizer = load_causal_lm("runs/quickstart-decoder")  # a run folder, or its last.ckpt
    print(generate_text(model, tokenizer, "The list type", max_new_tokens=40, temperature=0.8, top_k=50))

From the command line::

    python -m lit_lm.generate --checkpoint runs/quickstart-decoder/logs/version_0/checkpoints/last.ckpt \
        --prompt "The list type"
"""

import argparse
import sys

import torch
from tokenizers import Tokenizer

from lit_lm.checkpoint import errors_for_humans, load_causal_lm
from lit_lm.data.tokenizer import SpecialTokens
from lit_lm.models import DecoderForCausalLM


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """``logits`` [batch, vocab] with every token outside the top k, and outside the smallest set whose probability
    reaches top_p (nucleus sampling, Holtzman et al. 2020), set to -inf. The most likely token always stays."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs >= top_p  # the mass before this token already reaches top_p
        logits = logits.masked_fill(outside.scatter(-1, order, outside), float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``logits`` [batch, vocab]: the most likely (temperature 0), or a sample."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_settings(model: DecoderForCausalLM, length: int, temperature: float, top_k, top_p) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    config = model.config
    if config.position_embedding == "learned" and length > config.max_sequence_length:
        raise ValueError(f"the prompt plus max_new_tokens is {length} tokens, more than the model's "
                         f"{config.max_sequence_length} positions; shorten the prompt or lower max_new_tokens.")


@torch.no_grad()
def generate(
    model: DecoderForCausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``input_ids`` [batch, prompt] followed by up to ``max_new_tokens`` generated tokens each.

    temperature 0 is greedy; otherwise sampling from the softmax of logits / temperature, restricted to the top_k
    tokens and to the top_p nucleus when given. A row that produced ``eos_token_id`` continues with it (as padding)
    and generation stops when every row has. Prompts of different lengths: pad them on the left and pass
    ``attention_mask`` (with learned absolute positions, a padded prompt's positions then start late). With
    ``use_cache`` each step feeds only the new token and reuses the keys and values of the earlier ones; without, it
    runs the whole sequence again (same tokens, slower). The model's train/eval mode is kept.
    """
    _check_settings(model, input_ids.shape[1] + max_new_tokens, temperature, top_k, top_p)
    was_training = model.training
    model.eval()
    cache = model.new_cache() if use_cache else None
    sequence, step_input = input_ids, input_ids
    finished = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        logits = model(step_input, attention_mask=attention_mask, cache=cache).logits[:, -1]
        token = next_tokens(logits, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            token = token.masked_fill(finished, eos_token_id)
            finished |= token == eos_token_id
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        step_input = token[:, None] if use_cache else sequence
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(token), 1)], dim=1)
        if eos_token_id is not None and bool(finished.all()):
            break
    model.train(was_training)
    return sequence


def generate_text(model: DecoderForCausalLM, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 64,
                  eos_token_id: int | None = None, **settings) -> str:
    """The prompt and its continuation as text. The prompt follows an end-of-text token, as a document does in
    training; generation stops at the next one. ``settings``: those of ``generate``."""
    if eos_token_id is None:
        eos_token_id = SpecialTokens.from_tokenizer(tokenizer).eos
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    start = [eos_token_id] if eos_token_id is not None else []
    if not start and not ids:
        raise ValueError("an empty prompt needs a tokenizer with an end-of-text token to start from.")
    device = next(model.parameters()).device
    prompt_ids = torch.tensor([start + ids], device=device)
    out = generate(model, prompt_ids, max_new_tokens, eos_token_id=eos_token_id, **settings)[0, len(start):]
    return tokenizer.decode(out.tolist(), skip_special_tokens=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_lm.generate",
                                     description="Continue a prompt with a trained causal-LM checkpoint.")
    parser.add_argument("--checkpoint", required=True,
                        help="a CausalLMModule checkpoint, e.g. runs/x/logs/version_0/checkpoints/last.ckpt, or a "
                             "run folder (its newest last*.ckpt)")
    parser.add_argument("--prompt", default="", help="the text to continue ('' starts a new document)")
    parser.add_argument("--tokenizer", help="the run's tokenizer, if the checkpoint lacks it")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy decoding")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step")
    args = parser.parse_args(argv)
    model, tokenizer = load_causal_lm(args.checkpoint, args.tokenizer)
    generator = torch.Generator().manual_seed(args.seed)
    for i in range(args.num_samples):
        text = generate_text(model, tokenizer, args.prompt, args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, use_cache=not args.no_cache, generator=generator)
        print(("" if args.num_samples == 1 else f"--- sample {i + 1}\n") + text)


if __name__ == "__main__":
    with errors_for_humans(FileNotFoundError):
        main(sys.argv[1:])
