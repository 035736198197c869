"""FSDD speech-recognition benchmark: the default `python run.py task=asr` (from scratch, at most 20 minutes of
training), then its test WER/CER on connected digit strings and single words, and the validation curve.

    SUITE_DATA=../shared/data python bench/asr_quality.py [extra Hydra overrides, e.g. trainer.seed=1]

Targets (issue 6): single-word test WER <= 5% and connected-digit test WER <= 10%. Measured 2026-11-24 (seed 0, one
thread of a shared 2-core CPU, bf16, 2,660 steps / 17 epochs in 20 min): connected-digit test WER 0.0186, CER 0.0062;
single-word test WER 0.0000 (300/300); validation connected WER 0.9911 at 3.4 min -> 0.2337 at 8.5 -> 0.0277 at 18.3.
"""

from __future__ import annotations

import sys

from quality import summary, trained

TARGETS = {"word_wer": 0.05, "wer": 0.10}


def main() -> None:
    run_dir, saved, history = trained("task=asr", *sys.argv[1:], needs="fsdd/metadata.csv")
    m = saved["metrics"]
    print(summary(run_dir, saved, history, "utterances"))
    print("validation curve (step, minutes: connected WER / CER, single-word WER / CER):")
    for h in history:
        print(f"  {h['step']:5d} {h['elapsed'] / 60:5.1f}  {h['val/wer']:.4f} / {h['val/cer']:.4f}   "
              f"{h['val/word_wer']:.4f} / {h['val/word_cer']:.4f}")
    print(f"test connected digits: WER {m['wer']:.4f}  CER {m['cer']:.4f}")
    print(f"test single words:     WER {m['word_wer']:.4f}  CER {m['word_cer']:.4f}  (word accuracy "
          f"{1 - m['word_wer']:.2%})")
    for key, target in TARGETS.items():
        print(f"TARGET {key} <= {target:.2f}: {m[key]:.4f} {'met' if m[key] <= target else 'NOT met'}")


if __name__ == "__main__":
    main()
