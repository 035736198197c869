"""Decoding speed of the suite's sequence-to-sequence model: the suite's own search (`core.seq2seq.search`, the core's
preallocated KV cache) against transformers' `generate()` on the same model (a DynamicCache in an EncoderDecoderCache
through `core.seq2seq.CacheLayer`), greedy and beam 4, in one process, float32. The model is `model=small` (d_model
256, 4 + 4 layers, 4 heads, FFN 1024) with a vocabulary of 8000, untrained; batch 32, sources of 64 tokens, exactly
64 new tokens (EOS forbidden until then), so both decoders do the same work. Runs alternate; the medians of
wall time and of the process's CPU time count (the latter steadier where other jobs share the cores).
Optionally transformers' MarianMTModel of the same size (--marian). Prints the CPU flags it ran with.

    OMP_NUM_THREADS=2 python bench/decoding_speed.py [--reps 5] [--marian]
"""

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import GenerationConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quality import cpu_flags  # noqa: E402

from core.modeling import SuiteConfig  # noqa: E402
from core.seq2seq import SuiteForConditionalGeneration, search, token_lists  # noqa: E402
from core.transformer import TransformerConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
B, S, NEW, V = 32, 64, 64, 8000


def cpu_line() -> str:
    """The CPU and its flags (bench/quality.py), torch's vector capability and the threads it uses."""
    return (f"{cpu_flags()}; torch {torch.__version__} capability {torch.backends.cpu.get_cpu_capability()}, "
            f"{torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")


def marian():
    from transformers import MarianConfig, MarianMTModel

    cfg = MarianConfig(vocab_size=V, d_model=256, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024,
                       max_position_embeddings=256, pad_token_id=0, eos_token_id=2, decoder_start_token_id=1,
                       forced_eos_token_id=None)
    return MarianMTModel(cfg).eval()


def timed(fn) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (steadier on a shared machine) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--marian", action="store_true", help="also time MarianMTModel.generate of the same size")
    args = ap.parse_args()
    torch.manual_seed(0)
    core = TransformerConfig(**OmegaConf.load(ROOT / "conf/model/small.yaml"))
    config = SuiteConfig(**asdict(core), vocab_size=V, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         decoder_start_token_id=1)
    model = SuiteForConditionalGeneration(config).eval()
    src = torch.randint(3, V, (B, S))
    mask = torch.ones_like(src)
    print(cpu_line())
    print(f"float32; batch {B}, source {S}, {NEW} new tokens; median of {args.reps} alternating runs")
    hf = marian() if args.marian else None
    for beams in (1, 4):
        gen = GenerationConfig(max_new_tokens=NEW, min_new_tokens=NEW, num_beams=beams, decoder_start_token_id=1,
                               bos_token_id=1, eos_token_id=2, pad_token_id=0)
        runs = {"suite search": partial(search, model, src, mask, gen),
                "generate()": partial(model.generate, input_ids=src, attention_mask=mask, generation_config=gen)}
        if hf is not None:
            runs["Marian generate()"] = partial(hf.generate, input_ids=src, attention_mask=mask, generation_config=gen)
        with torch.no_grad():
            same = runs["suite search"]() == token_lists(runs["generate()"](), 2, 0)  # also the warm-up
            if hf is not None:
                runs["Marian generate()"]()
            times = {name: [] for name in runs}
            for _ in range(args.reps):
                for name, fn in runs.items():
                    times[name].append(timed(fn))
        label = "greedy" if beams == 1 else f"beam {beams}"
        rates = {}
        for name, t in times.items():
            wall, cpu = (statistics.median(x) for x in zip(*t))
            rates[name] = (B * NEW / wall, B * NEW / cpu)
            print(f"  {label:7s} {name:18s} {rates[name][0]:7.0f} new tokens/s wall ({wall:.2f} s), "
                  f"{rates[name][1]:7.0f} per CPU-second ({cpu:.2f} s)")
        ratio = [g / s for g, s in zip(rates["generate()"], rates["suite search"])]
        print(f"  {label:7s} generate() / suite search: {ratio[0]:.2f}x wall, {ratio[1]:.2f}x CPU time "
              f"(same tokens: {same})")


if __name__ == "__main__":
    main()
