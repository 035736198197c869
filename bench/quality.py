"""What the quality benchmarks share: run `python run.py ...` as a user would, and find the run it saved."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    """`python run.py ARGS` from the repository root; its stdout, or exit with the end of its stderr."""
    cmd = [sys.executable, str(ROOT / "run.py"), *args]
    print("$", " ".join(cmd[1:]), flush=True)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    return out.stdout


def saved_run(stdout: str) -> Path:
    """The run folder a training run printed (`run saved in <dir> (leaderboard: ...)`)."""
    return Path(stdout.split("run saved in ")[-1].split(" (")[0])
