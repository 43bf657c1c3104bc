"""Preprocessing throughput of the whole data pipeline against bare `tokenizers` encoding of the same text.

On ../shared/data/gutenberg (or --path), in one run:
  bare       `Tokenizer.encode_batch` over the same paragraphs, with the same WordPiece tokenizer (both cores);
  pipeline   `build_store`: read, decode, clean, exact + paragraph + MinHash near dedup, split, encode, pack, write
             shards (2 processes), with that tokenizer given, and again training its own tokenizer.
MB/s is input bytes per second of wall time. Also: our vectorised MinHash against datasketch's on a sample.

    python benchmarks/data_pipeline.py [--path ../shared/data/gutenberg]

Last line: one JSON object.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's lit_lm, even where another one is installed

from lit_lm.data.dedup import DedupConfig, Deduplicator, hash_documents  # noqa: E402
from lit_lm.data.minhash import shingles  # noqa: E402
from lit_lm.data.pipeline import build_store  # noqa: E402
from lit_lm.data.recipe import Recipe  # noqa: E402
from lit_lm.data.sources import resolve_paths  # noqa: E402
from lit_lm.data.text import decode, split_documents  # noqa: E402
from lit_lm.data.tokenizer import TokenizerConfig, train_tokenizer  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def minhash_comparison(paragraphs: list[str], num_perm: int = 128) -> dict:
    """Signatures + LSH dedup of the same paragraphs: ours (vectorised numpy) against datasketch."""
    mb = sum(len(p.encode()) for p in paragraphs) / 1e6
    config = DedupConfig(exact=False, paragraphs=False, num_perm=num_perm)

    def ours():
        with tempfile.TemporaryDirectory() as tmp:
            dedup = Deduplicator(config, Path(tmp))
            for i in range(0, len(paragraphs), 5000):
                dedup.filter(hash_documents(paragraphs[i : i + 5000], config))
            dedup.close()
            return dedup.stats.near_duplicates
    ours_found, ours_s = timed(ours)
    result = {"sample_mb": round(mb, 2), "ours_mb_s": round(mb / ours_s, 2), "ours_near_duplicates": ours_found}
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        return result

    def theirs():
        lsh, found = MinHashLSH(threshold=config.threshold, num_perm=num_perm), 0
        for i, text in enumerate(paragraphs):
            values, _ = shingles([text], config.ngram)  # the same word 5-gram shingles
            m = MinHash(num_perm=num_perm)
            m.update_batch([v.tobytes() for v in values])
            if lsh.query(m):
                found += 1
            lsh.insert(str(i), m)
        return found
    theirs_found, theirs_s = timed(theirs)
    return {**result, "datasketch_mb_s": round(mb / theirs_s, 2), "datasketch_near_duplicates": theirs_found}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--path", default=str(ROOT.parent / "shared" / "data" / "gutenberg"))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--minhash-sample", type=int, default=20000, help="paragraphs for the MinHash comparison")
    args = parser.parse_args()
    files = resolve_paths([args.path])
    raw_bytes = sum(f.stat().st_size for f in files)
    mb = raw_bytes / 1e6
    paragraphs = [p for f in files for p in split_documents(decode(f.read_bytes()).text, "paragraph")]
    print(f"{len(files)} files, {mb:.1f} MB, {len(paragraphs)} paragraphs", flush=True)

    work = Path(tempfile.mkdtemp(prefix="lit-lm-pipeline-"))
    tok_config = TokenizerConfig(vocab_size=args.vocab_size)
    tokenizer = train_tokenizer(paragraphs, tok_config)  # untimed: the tokenizer both sides use
    tokenizer.save(str(work / "tokenizer.json"))

    def bare():
        n = 0
        for i in range(0, len(paragraphs), 2048):
            n += sum(len(e.ids) for e in tokenizer.encode_batch(paragraphs[i : i + 2048], add_special_tokens=False))
        return n
    bare_tokens, bare_s = timed(bare)
    print(f"bare encode_batch: {bare_s:.1f} s, {mb / bare_s:.2f} MB/s, {bare_tokens} tokens", flush=True)

    def pipeline(tokenizer_config: TokenizerConfig, name: str):
        recipe = Recipe.plan(paths=[args.path], split="paragraph", tokenizer=tokenizer_config, seq_length=128)
        return build_store(recipe, work / name, num_proc=2, progress=False)
    card, given_s = timed(lambda: pipeline(TokenizerConfig(path=str(work / "tokenizer.json")), "given"))
    print(f"pipeline, tokenizer given: {given_s:.1f} s, {mb / given_s:.2f} MB/s", flush=True)
    _, trained_s = timed(lambda: pipeline(tok_config, "trained"))
    print(f"pipeline, training its tokenizer: {trained_s:.1f} s, {mb / trained_s:.2f} MB/s", flush=True)
    sample = [paragraphs[i] for i in np.linspace(0, len(paragraphs) - 1, min(args.minhash_sample, len(paragraphs))).astype(int)]
    minhash = minhash_comparison(sample)
    print("minhash:", json.dumps(minhash), flush=True)
    print(json.dumps({
        "input_mb": round(mb, 1), "bare_encode_mb_s": round(mb / bare_s, 2),
        "pipeline_given_tokenizer_mb_s": round(mb / given_s, 2),
        "pipeline_training_tokenizer_mb_s": round(mb / trained_s, 2),
        "ratio_given_tokenizer": round(bare_s / given_s, 2), "ratio_training_tokenizer": round(bare_s / trained_s, 2),
        "target_ratio": 0.5, "docs_in": card["docs_in"], "docs_out": card["docs_out"],
        "exact_duplicates": card["exact_duplicates"], "near_duplicates": card["near_duplicates"],
        "duplicate_paragraphs": card["duplicate_paragraphs"], "tokens": card["tokens"], "minhash": minhash,
    }))


if __name__ == "__main__":
    main()
