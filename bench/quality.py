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
