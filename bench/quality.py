"""What the quality benchmarks share: run `python run.py ...` as a user would, find the run it saved, and print its
summary."""

import json
import os
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


def cpu_flags() -> str:
    """The CPU and the flags that decide its speed (bf16 matmuls need avx512_bf16 or amx): compare only figures taken
    side by side on the same machine."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "cpu: unknown"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"cpu: {model}, {len(info.split('processor')) - 1} cores, flags {' '.join(shown) or 'none of avx2/avx512'}"


def saved_run(stdout: str) -> Path:
    """The run folder a training run printed (`run saved in <dir> (leaderboard: ...)`)."""
    return Path(stdout.split("run saved in ")[-1].split(" (")[0])


def trained(*args: str, needs: str | None = None) -> tuple[Path, dict, list[dict]]:
    """Train `python run.py ARGS`: its run folder, its metrics.json and its validation curve (history.jsonl).
    `needs`: the data file SUITE_DATA must hold (the benchmark exits with a hint when SUITE_DATA is unset)."""
    if needs and not os.environ.get("SUITE_DATA"):
        sys.exit(f"set SUITE_DATA to the folder holding {needs} (e.g. ../shared/data)")
    run_dir = saved_run(run(*args))
    saved = json.loads((run_dir / "metrics.json").read_text())
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    print(cpu_flags())
    return run_dir, saved, history


def summary(run_dir: Path, saved: dict, history: list[dict], unit: str) -> str:
    """Where the run is, its size, steps, minutes and speed."""
    return (f"run {run_dir}\nparameters {saved['params']:,}; {saved['steps']} steps ({history[-1]['epoch']} full "
            f"epochs) in {saved['train_seconds'] / 60:.1f} min; {saved['samples_per_second']:.1f} {unit}/s in train "
            f"steps; {saved['device']}; best step {saved['best_step']}")

