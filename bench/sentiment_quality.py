"""SST-2 quality benchmark: the default `python run.py task=sentiment` (from scratch, at most 15 minutes of
training on this machine), then its test metrics, training time and throughput as the leaderboard recorded them.

    SUITE_DATA=../shared/data python bench/sentiment_quality.py [extra Hydra overrides, e.g. trainer.seed=1]
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    cmd = [sys.executable, str(ROOT / "run.py"), "task=sentiment", *sys.argv[1:]]
    print("$", " ".join(cmd[1:]), flush=True)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-2000:])
    run_id = out.stdout.split("run_id ")[-1].split(")")[0]
    board = subprocess.run([sys.executable, str(ROOT / "run.py"), "mode=leaderboard", "leaderboard.format=json"],
                           cwd=ROOT, capture_output=True, text=True, check=True)
    (row,) = [r for r in json.loads(board.stdout) if r["run_id"] == run_id]
    m = row["metrics"]
    print(f"SST-2 test accuracy {m['accuracy']:.2%}  macro-F1 {m['macro_f1']:.4f}  (target >= 80%)")
    print(f"training {row['train_seconds'] / 60:.1f} min (budget 15), {row['samples_per_second']:.0f} samples/s, "
          f"{row['params']:,} parameters, {row['device']}, model {row['model']}, seed {row['seed']}")
    print(f"run {run_id}: {Path(out.stdout.split('run saved in ')[-1].split(' (')[0])}")


if __name__ == "__main__":
    main()
