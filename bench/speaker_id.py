"""FSDD speaker identification benchmark: the leaderboard's reference (MFCC + RBF-SVM, measured on the official split)
and the default `python run.py task=speaker_id` (from scratch, at most 10 minutes of training), with its test
accuracy and the validation curve.

    SUITE_DATA=../shared/data python bench/speaker_id.py [--reference] [extra Hydra overrides, e.g. trainer.seed=1]

--reference prints the MFCC + SVM figure alone. On a machine that other jobs keep busy, add trainer.clock=process
(10 minutes of this process's CPU time) and OMP_NUM_THREADS=1. Target (issue 20): test accuracy >= 0.97.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import torchaudio
from quality import ROOT, cpu_flags, summary, trained
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

sys.path.insert(0, str(ROOT))
from core.audio import read_audio  # noqa: E402

TARGET = 0.97


def mfcc_features(wave, mfcc) -> np.ndarray:
    """13 MFCCs summarised per recording: mean and standard deviation, and the means of 4 equal segments (the data
    README's digit baseline, here for speakers)."""
    m = mfcc(wave).numpy()  # (13, frames)
    segments = [s.mean(1) for s in np.array_split(m, 4, axis=1) if s.size] or [m.mean(1)]
    segments += [segments[-1]] * (4 - len(segments))  # clips shorter than 4 frames
    return np.concatenate([m.mean(1), m.std(1), *segments])


def reference() -> float:
    """Test accuracy of MFCC + RBF-SVM (C=10) trained on FSDD's official training split (recordings 5-49)."""
    folder = Path(os.environ["SUITE_DATA"]) / "fsdd"
    mfcc = torchaudio.transforms.MFCC(8000, n_mfcc=13, melkwargs={"n_fft": 256, "win_length": 200,
                                                                   "hop_length": 80, "n_mels": 40})
    x, y, split = [], [], []
    with open(folder / "metadata.csv") as f:
        for row in csv.DictReader(f):
            x.append(mfcc_features(read_audio(str(folder / row["file_name"]), 8000), mfcc))
            y.append(row["speaker"])
            split.append(row["split"])
    x, y, test = np.stack(x), np.array(y), np.array(split) == "test"
    svm = make_pipeline(StandardScaler(), SVC(C=10, kernel="rbf")).fit(x[~test], y[~test])
    accuracy = float((svm.predict(x[test]) == y[test]).mean())
    print(f"reference: MFCC + RBF-SVM, {(~test).sum()} training / {test.sum()} test recordings, "
          f"{len(set(y))} speakers: test accuracy {accuracy:.4f}")
    return accuracy


def main() -> None:
    if not os.environ.get("SUITE_DATA"):
        sys.exit("set SUITE_DATA to the folder holding fsdd/metadata.csv")
    print(cpu_flags())
    reference()
    if "--reference" in sys.argv:
        return
    run_dir, saved, history = trained("task=speaker_id", *[a for a in sys.argv[1:] if a != "--reference"])
    m = saved["metrics"]
    print(summary(run_dir, saved, history, "recordings"))
    print("validation curve (step, minutes: accuracy):")
    for h in history:
        print(f"  {h['step']:5d} {h['elapsed'] / 60:5.1f}  {h['val/accuracy']:.4f}")
    print(f"test accuracy {m['accuracy']:.4f}  macro F1 {m['macro_f1']:.4f}; per speaker: "
          + ", ".join(f"{k[4:]} {v:.2f}" for k, v in m.items() if k.startswith("acc_")))
    print(f"TARGET accuracy >= {TARGET:.2f}: {m['accuracy']:.4f} {'met' if m['accuracy'] >= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
