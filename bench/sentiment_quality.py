"""SST-2 quality benchmark: the default `python run.py task=sentiment` (from scratch, at most 15 minutes of
training on this machine) once per seed, then each run's test metrics, training time and throughput, and the mean
and the worst over the seeds: the target (80%) should hold for every seed, not on average.

    SUITE_DATA=../shared/data python bench/sentiment_quality.py [--seeds 0 1 2] [extra Hydra overrides]
"""

import argparse
import json
import statistics

from quality import run, saved_run

TARGET = 0.80


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args, overrides = ap.parse_known_args()
    accuracies = []
    for seed in args.seeds:
        run_dir = saved_run(run("task=sentiment", f"trainer.seed={seed}", *overrides))
        row = json.loads((run_dir / "metrics.json").read_text())
        m = row["metrics"]
        accuracies.append(m["accuracy"])
        print(f"seed {seed}: SST-2 test accuracy {m['accuracy']:.2%}  macro-F1 {m['macro_f1']:.4f}; training "
              f"{row['train_seconds'] / 60:.1f} min (budget 15), {row['samples_per_second']:.0f} samples/s, "
              f"{row['params']:,} parameters, {row['device']}, model {row['model']}; run {run_dir}", flush=True)
    worst = min(accuracies)
    print(f"SST-2 test accuracy over {len(accuracies)} seed(s): mean {statistics.mean(accuracies):.2%}, "
          f"worst {worst:.2%}, best {max(accuracies):.2%} (target {TARGET:.0%} for every seed: "
          f"{'met' if worst >= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
