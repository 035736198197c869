"""CoNLL-2003 NER quality benchmark: the default `python run.py task=ner` (from scratch, at most 30 minutes of
training), then its test entity F1 overall and per type, the validation F1 curve, training time and throughput.

    SUITE_DATA=../shared/data python bench/ner_quality.py [overrides, e.g. task.decoder=crf task.char_features=false]
"""

import json
import sys

from quality import run, saved_run


def main() -> None:
    run_dir = saved_run(run("task=ner", *sys.argv[1:]))
    row = json.loads((run_dir / "metrics.json").read_text())
    m = row["metrics"]
    print(f"CoNLL-2003 test entity F1 {m['f1']:.2f}  P {m['precision']:.2f}  R {m['recall']:.2f}  (target >= 75)"
          + (f"  [argmax decoding: F1 {m['f1_argmax']:.2f}]" if "f1_argmax" in m else ""))
    for kind in sorted({k.split("_")[0] for k in m if k.endswith("_f1") and k != "f1_argmax"}):
        print(f"  {kind:5s} F1 {m[kind + '_f1']:.2f}  P {m[kind + '_precision']:.2f}  R {m[kind + '_recall']:.2f}")
    curve = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    print("validation F1 by step (minutes): " + ", ".join(
        f"{r['step']} ({r['elapsed'] / 60:.1f}): {r['val/f1']:.2f}" for r in curve))
    print(f"best validation F1 {max(r['val/f1'] for r in curve):.2f} at step {row['best_step']} of {row['steps']}")
    print(f"training {row['train_seconds'] / 60:.1f} min (budget 30), {row['samples_per_second']:.0f} samples/s, "
          f"{row['params']:,} parameters, {row['device']}, model {row['model']}, seed {row['seed']}")
    print(f"run {row['run_id']}: {run_dir}")


if __name__ == "__main__":
    main()
