"""Perplexity of a causal LM on held-out text, with a sliding window: token perplexity and bits per byte.

    python -m lit_lm.evaluate perplexity --checkpoint runs/quickstart-decoder/logs/version_0/checkpoints/last.ckpt \\
        --file ../shared/data/wikitext-2/test.txt --context-length 128 --stride 64

The text is tokenized whole, after one end-of-text token (as a document starts in training). Windows of
``context_length`` tokens advance by ``stride``; each window scores only the tokens no earlier window scored, so
every token is scored exactly once with at least ``context_length - stride`` tokens of context (except in the first
window). Token perplexity is ``exp(mean negative log-likelihood per token)``; it depends on the tokenizer. Bits per
byte is the total negative log-likelihood in bits over the text's UTF-8 bytes: comparable across tokenizers.
The last line printed is one JSON object.
"""

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from lit_lm.checkpoint import errors_for_humans, load_causal_lm
from lit_lm.data.tokenizer import SpecialTokens


@dataclass
class Perplexity:
    tokens: int
    """Tokens scored (the text's tokens)."""
    bytes: int
    """UTF-8 bytes of the text."""
    nll: float
    """Total negative log-likelihood, in nats."""
    token_perplexity: float
    bits_per_byte: float
    context_length: int
    stride: int


def windows(n: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, end, first_scored)`` for each window over ``n`` tokens: the window feeds tokens ``start .. end-1``
    and scores the predictions of tokens ``first_scored .. end-1`` (token 0 is context only)."""
    if not 0 < stride <= context_length - 1:
        raise ValueError(f"stride must be in [1, context_length - 1] = [1, {context_length - 1}], got {stride}.")
    out, scored_until, start = [], 1, 0
    while scored_until < n:
        end = min(start + context_length, n)
        out.append((start, end, scored_until))
        scored_until = end
        start += stride
    return out


@torch.no_grad()
def sliding_window_nll(model, ids: torch.Tensor, context_length: int, stride: int,
                       batch_size: int = 8) -> tuple[float, int]:
    """Total next-token negative log-likelihood (nats) of ``ids[1:]`` given what precedes each, and the count."""
    model.eval()
    device = next(model.parameters()).device
    spans = windows(len(ids), context_length, stride)
    total, count = 0.0, 0
    for i in range(0, len(spans), batch_size):
        group = spans[i : i + batch_size]
        for length in sorted({end - start for start, end, _ in group}):  # the last window may be shorter
            same = [w for w in group if w[1] - w[0] == length]
            inputs = torch.stack([ids[start:end] for start, end, _ in same]).to(device)
            log_probs = F.log_softmax(model(inputs).logits[:, :-1].float(), dim=-1)
            targets = inputs[:, 1:]
            token_nll = -log_probs.gather(-1, targets[..., None]).squeeze(-1)  # [windows, length - 1]
            for row, (start, end, first) in zip(token_nll, same):
                scored = row[first - start - 1 :]  # position p predicts token start + p + 1
                total += scored.sum().item()
                count += len(scored)
    return total, count


def perplexity(model, tokenizer: Tokenizer, text: str, context_length: int | None = None, stride: int | None = None,
               batch_size: int = 8) -> Perplexity:
    """Token perplexity and bits per byte of ``text`` under ``model`` (a ``DecoderForCausalLM``).

    context_length defaults to the model's longest sequence (max_position_embeddings, or 1024 without a position
    table), stride to half of it."""
    if not text:
        raise ValueError("perplexity: the text is empty.")
    config = model.config
    longest = config.max_sequence_length if config.position_embedding == "learned" else 1024
    context_length = context_length or longest
    if config.position_embedding == "learned" and context_length > longest:
        raise ValueError(f"context_length {context_length} exceeds the model's {longest} positions.")
    stride = stride or context_length // 2
    start = SpecialTokens.from_tokenizer(tokenizer).eos
    if start is None:
        raise ValueError("perplexity: the tokenizer has no end-of-text token to start the text from.")
    ids = torch.tensor([start, *tokenizer.encode(text, add_special_tokens=False).ids])
    nll, count = sliding_window_nll(model, ids, context_length, stride, batch_size)
    n_bytes = len(text.encode("utf-8"))
    return Perplexity(tokens=count, bytes=n_bytes, nll=nll, token_perplexity=math.exp(nll / count),
                      bits_per_byte=nll / math.log(2) / n_bytes, context_length=context_length, stride=stride)


def read_text(path: str | Path, max_bytes: int | None = None) -> str:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--file {str(path)!r} does not exist.")
    data = path.read_bytes()[:max_bytes] if max_bytes else path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if max_bytes and err.start >= len(data) - 3:  # the cut split the last character: drop its first bytes
            return data[: err.start].decode("utf-8")
        raise ValueError(f"--file {str(path)!r} is not UTF-8 text ({err}).") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_lm.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ppl = commands.add_parser("perplexity", help="token perplexity and bits per byte on a text file")
    ppl.add_argument("--checkpoint", required=True, help="a CausalLMModule checkpoint, or a run folder (its newest "
                                                          "last*.ckpt)")
    ppl.add_argument("--file", required=True, help="UTF-8 text, e.g. ../shared/data/wikitext-2/test.txt")
    ppl.add_argument("--tokenizer", help="the run's tokenizer, if the checkpoint lacks it")
    ppl.add_argument("--context-length", type=int, default=None, help="tokens per window (default: the model's)")
    ppl.add_argument("--stride", type=int, default=None, help="tokens each window advances (default: half a window)")
    ppl.add_argument("--batch-size", type=int, default=8, help="windows per forward")
    ppl.add_argument("--max-bytes", type=int, default=None, help="evaluate only the first bytes of the file")
    args = parser.parse_args(argv)
    model, tokenizer = load_causal_lm(args.checkpoint, args.tokenizer)
    started = time.perf_counter()
    result = perplexity(model, tokenizer, read_text(args.file, args.max_bytes), args.context_length, args.stride,
                        args.batch_size)
    print(f"{args.file}: {result.tokens} tokens, {result.bytes} bytes: token perplexity "
          f"{result.token_perplexity:.2f}, {result.bits_per_byte:.4f} bits per byte", file=sys.stderr)
    print(json.dumps({**asdict(result), "file": str(args.file), "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    with errors_for_humans(FileNotFoundError):
        main(sys.argv[1:])
