"""Peak memory while preparing and streaming a generated corpus larger than a few GB of RAM would hold comfortably.

Generates a 2 GB text corpus under /tmp (English-like sentences from a 20k-word vocabulary, in 2,000 files), then in
separate processes (so each peak is its own): builds the store (`build_store`, cleaning + dedup + tokenizer training
+ encoding + packing, 2 processes) and streams the whole training split once through the training DataLoader
(2 workers). Reports the peak resident memory of each (max RSS of the process and, separately, of its children),
next to the corpus size. Deletes everything it wrote at the end.

    python benchmarks/data_memory.py [--gigabytes 2] [--keep]

Last line: one JSON object.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's lit_lm, even where another one is installed


def generate(folder: Path, total_bytes: int, files: int = 2000, seed: int = 0) -> int:
    """English-like text: Zipf-distributed words from a 20k-word vocabulary, 12-word sentences, 8-sentence paragraphs."""
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "va", "an", "el", "or", "is", "um"]
    vocab = sorted({"".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(60000)})[:20000]
    # each word in three forms: inside a sentence, ending a sentence, ending a paragraph
    table = [w.encode() + b" " for w in vocab] + [w.encode() + b". " for w in vocab] + [w.encode() + b".\n\n" for w in vocab]
    folder.mkdir(parents=True)
    per_file, written = total_bytes // files, 0
    for i in range(files):
        ids = np.minimum(rng.zipf(1.2, per_file // 5), len(vocab)) - 1
        position = np.arange(len(ids))
        ids += len(vocab) * ((position % 12 == 11).astype(np.int64) + (position % 96 == 95))
        data = b"".join([table[j] for j in ids.tolist()])[:per_file]
        (folder / f"part-{i:05d}.txt").write_bytes(data)
        written += len(data)
    return written


def peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def child_prepare(corpus: str, cache: str) -> None:
    from lit_lm.data import PretrainingDataModule, TokenizerConfig
    start = time.perf_counter()
    dm = PretrainingDataModule(paths=[corpus], split="paragraph", tokenizer=TokenizerConfig(vocab_size=8192),
                               seq_length=128, num_proc=2, cache_dir=cache, progress=True)
    dm.prepare_data()
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": peak_mb(resource.RUSAGE_SELF),
                      "peak_rss_children_mb": peak_mb(resource.RUSAGE_CHILDREN), "card": dm.card}))


def child_stream(corpus: str, cache: str) -> None:
    from lit_lm.data import PretrainingDataModule, TokenizerConfig
    dm = PretrainingDataModule(paths=[corpus], split="paragraph", tokenizer=TokenizerConfig(vocab_size=8192),
                               seq_length=128, batch_size=64, num_workers=2, num_proc=2, cache_dir=cache,
                               progress=False)
    dm.setup("fit")
    start, rows, tokens = time.perf_counter(), 0, 0
    for batch in dm.train_dataloader():
        rows += len(batch["input_ids"])
        tokens += int(batch["attention_mask"].sum())
    print(json.dumps({"seconds": time.perf_counter() - start, "rows": rows, "tokens": tokens,
                      "train_rows": len(dm.train_store), "peak_rss_mb": peak_mb(resource.RUSAGE_SELF),
                      "peak_rss_children_mb": peak_mb(resource.RUSAGE_CHILDREN)}))


def run_child(mode: str, corpus: Path, cache: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(corpus), str(cache)], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--keep", action="store_true", help="keep the generated corpus and store")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, corpus, cache = args.child
        (child_prepare if mode == "prepare" else child_stream)(corpus, cache)
        return
    work = Path(tempfile.mkdtemp(prefix="lit-lm-memory-", dir="/tmp"))
    try:
        start = time.perf_counter()
        corpus_bytes = generate(work / "corpus", int(args.gigabytes * 1e9))
        print(f"generated {corpus_bytes / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s", flush=True)
        prepared = run_child("prepare", work / "corpus", work / "cache")
        print("prepare:", json.dumps({k: v for k, v in prepared.items() if k != "card"}), flush=True)
        streamed = run_child("stream", work / "corpus", work / "cache")
        print("stream:", json.dumps(streamed), flush=True)
        store_bytes = sum(f.stat().st_size for f in (work / "cache").rglob("*") if f.is_file())
        card = prepared["card"]
        print(json.dumps({
            "corpus_gb": round(corpus_bytes / 1e9, 3), "store_gb": round(store_bytes / 1e9, 3),
            "tokens": card["tokens"], "train_rows": streamed["train_rows"], "rows_streamed": streamed["rows"],
            "prepare_seconds": round(prepared["seconds"], 1),
            "prepare_peak_rss_mb": round(prepared["peak_rss_mb"]),
            "prepare_worker_peak_rss_mb": round(prepared["peak_rss_children_mb"]),
            "stream_seconds": round(streamed["seconds"], 1),
            "stream_peak_rss_mb": round(streamed["peak_rss_mb"]),
            "stream_worker_peak_rss_mb": round(streamed["peak_rss_children_mb"]),
            "target_mb": 1536,
        }))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
