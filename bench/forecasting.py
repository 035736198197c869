"""ETTh1 multivariate forecasting from scratch: test MSE / MAE per horizon, beside the repeat-last-value baseline.

Each horizon is one ordinary training run (`python run.py task=forecasting task.horizon=H`, the settings of
conf/task/forecasting.yaml: PatchTST-style patches, look-back L=336, model tiny, at most 15 minutes of training
on a 2-core CPU), recorded in the leaderboard like any run; its folder goes under bench/results/. The target at
H=96 is a test MSE of at most 0.40 (PatchTST/42 0.375, DLinear 0.375, repeat-last-value 1.295).

    SUITE_DATA=../shared/data python bench/forecasting.py [--horizons 96 192 336 720] [--minutes 15]
        [--minutes-long 15] [any run.py override, e.g. task.architecture=encdec]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = {96: 0.375, 192: 0.414, 336: 0.431, 720: 0.449}  # PatchTST/42 (L=336), Nie et al. 2023, Table 3


def run(horizon: int, minutes: float, overrides: list[str]) -> dict:
    run_dir = ROOT / "bench" / "results" / f"forecasting_H{horizon}_{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, str(ROOT / "run.py"), "task=forecasting", f"task.horizon={horizon}",
           f"trainer.max_minutes={minutes:g}", f"run_dir={run_dir}", *overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return json.loads((run_dir / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--horizons", type=int, nargs="+", default=[96, 192, 336, 720])
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget at H=96")
    ap.add_argument("--minutes-long", type=float, default=15.0, help="training budget at the other horizons")
    args, overrides = ap.parse_known_args()
    if not os.environ.get("SUITE_DATA") and not any(o.startswith("data.") for o in overrides):
        sys.exit("set SUITE_DATA to the folder holding etth1/ETTh1.csv (e.g. ../shared/data)")
    results = {}
    for h in args.horizons:
        results[h] = run(h, args.minutes if h == 96 else args.minutes_long, overrides)
    print(f"\nETTh1 multivariate, test split, scaled data, every window (overrides: {' '.join(overrides) or 'none'})")
    print(f"{'H':>4} {'windows':>7} {'MSE':>7} {'MAE':>7} {'last-value MSE':>15} {'MAE':>6} {'PatchTST/42':>12} "
          f"{'train min':>9} {'steps':>6} {'best step':>9}")
    for h, r in results.items():
        m = r["metrics"]
        print(f"{h:>4} {2881 - h:>7} {m['mse']:>7.4f} {m['mae']:>7.4f} {m['baseline_mse']:>15.4f} "
              f"{m['baseline_mae']:>6.4f} {REFERENCE.get(h, float('nan')):>12.3f} {r['train_seconds'] / 60:>9.1f} "
              f"{r['steps']:>6} {r['best_step']:>9}")
    if 96 in results:
        mse = results[96]["metrics"]["mse"]
        print(f"H=96 target MSE <= 0.40: {'met' if mse <= 0.40 else 'NOT met'} ({mse:.4f})")


if __name__ == "__main__":
    main()
