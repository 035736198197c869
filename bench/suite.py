"""The suite benchmark: every task one after another with a short budget each, then the cross-task leaderboard.

    SUITE_DATA=../shared/data python bench/suite.py                          # 4 minutes per task
    SUITE_DATA=../shared/data python bench/suite.py model=small,small_rope   # two variants side by side

Without model=, each task trains its own default variant (conf/config.yaml's small, but NER small_rope and
forecasting tiny, as their task YAMLs choose), as `python run.py -m 'task=glob(*)'` does; give model= to compare
one variant on all seven.

It runs `python run.py -m 'task=glob(*)' trainer.max_minutes=4 ...` into a fresh leaderboard of its own
(bench/results/suite_<time>/leaderboard.db), prints the sweep's summary (wall time per task), the total wall time,
and the leaderboard in Markdown: one row per variant, each task's headline metric and normalised score, the mean.
Extra arguments are Hydra overrides for every job (e.g. trainer.max_minutes=2, trainer.clock=process). Passing
leaderboard.path=<an earlier sweep's leaderboard.db> adds this sweep's runs to it, so a second variant swept later
lands in the same table as the first.
"""

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    stamp = time.strftime('%Y%m%d-%H%M%S')
    overrides = [o for o in sys.argv[1:] if not o.startswith("leaderboard.path=")]
    given = [o.split("=", 1)[1] for o in sys.argv[1:] if o.startswith("leaderboard.path=")]
    db = Path(given[-1]).resolve() if given else ROOT / "bench" / "results" / f"suite_{stamp}" / "leaderboard.db"
    out_dir = db.parent
    if not any(o.startswith("trainer.max_minutes=") for o in overrides):
        overrides.append("trainer.max_minutes=4")
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "task=glob(*)", f"leaderboard.path={db}",
           f"hydra.sweep.dir={out_dir}/jobs_{stamp}", *overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    started = time.perf_counter()
    sweep = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    total = time.perf_counter() - started
    summary = sweep.stdout[sweep.stdout.find("suite: "):] if "suite: " in sweep.stdout else sweep.stderr[-3000:]
    print(summary.rstrip())
    print(f"total wall time {total / 60:.1f} min (sweep exit code {sweep.returncode})")
    board = subprocess.run([sys.executable, str(ROOT / "run.py"), "mode=leaderboard", f"leaderboard.path={db}",
                            "leaderboard.format=markdown"], cwd=ROOT, capture_output=True, text=True)
    print(board.stdout if board.returncode == 0 else board.stderr)
    (out_dir / f"report_{stamp}.md").write_text(f"{summary}\ntotal wall time {total / 60:.1f} min\n\n{board.stdout}")


if __name__ == "__main__":
    main()
