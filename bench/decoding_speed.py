"""Greedy decoding speed of the suite's encoder-decoder: with the KV cache, recomputing the prefix, and
transformers' MarianMTModel.generate of the same size (d_model 256, 4 + 4 layers, 4 heads, FFN 1024, vocabulary
8000), side by side in one process. Batch 32, source 64 tokens, exactly 64 new tokens (EOS forbidden until then).

    python bench/decoding_speed.py [--bf16]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.seq2seq import GenerationConfig, Seq2SeqTransformer  # noqa: E402
from core.transformer import TransformerConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
B, S, NEW, V = 32, 64, 64, 8000


def marian():
    from transformers import MarianConfig, MarianMTModel

    cfg = MarianConfig(vocab_size=V, d_model=256, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024,
                       max_position_embeddings=256,
                       pad_token_id=0, eos_token_id=2, decoder_start_token_id=1, forced_eos_token_id=None)
    return MarianMTModel(cfg).eval()


def rate(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return B * NEW / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bf16", action="store_true", help="run under bf16 autocast")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = TransformerConfig(**OmegaConf.load(ROOT / "conf/model/small.yaml"))
    suite = Seq2SeqTransformer(cfg, V, pad_id=0, bos_id=1, eos_id=2).eval()
    hf = marian()
    src = torch.randint(3, V, (B, S))
    mask = torch.ones_like(src)
    gen = GenerationConfig(max_new_tokens=NEW, min_new_tokens=NEW)
    runs = {
        "suite, KV cache": lambda: suite.generate(src, mask, gen),
        "suite, recompute prefix": lambda: suite.generate(src, mask, gen, use_cache=False),
        "Marian generate(), cache": lambda: hf.generate(input_ids=src, attention_mask=mask, max_new_tokens=NEW,
                                                        min_new_tokens=NEW, num_beams=1, do_sample=False),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {'bf16 autocast' if args.bf16 else 'float32'}"
          f"; batch {B}, source {S}, {NEW} new tokens")
    results = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        for name, fn in runs.items():
            results[name] = rate(fn, args.reps if "recompute" not in name else 1)
            print(f"  {name:26s} {results[name]:8.0f} new tokens/s")
    print(f"  suite cache / Marian cache: {results['suite, KV cache'] / results['Marian generate(), cache']:.2f}x")


if __name__ == "__main__":
    main()
