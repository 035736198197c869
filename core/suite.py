"""The suite runner: `python run.py -m 'task=glob(*)' [model=small,small_rope]` trains every task in turn.

Hydra's sweep does the running (one job per task and variant, sequentially with the basic launcher); this callback
makes it a suite: a failing job is reported and the others go on and keep their leaderboard rows, and at the end a
summary lists every job's wall time and each failure with its error. Each job's outcome is appended to
`<sweep dir>/jobs.jsonl`, so the summary also works with launchers that run jobs in other processes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from core.task import UserError

log = logging.getLogger("suite")


def jobs_file(config: DictConfig) -> Path:
    return Path(config.hydra.sweep.dir) / "jobs.jsonl"


class SuiteReport(Callback):
    """Record each job's outcome; after the sweep, print the summary and exit 1 if any job failed."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        entry = {"num": config.hydra.job.num, "overrides": list(job_return.overrides or []),
                 "status": "ok", "seconds": round(time.perf_counter() - self.started, 1), "error": None}
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value  # the exception; `return_value` would re-raise it
            entry["status"], entry["error"] = "failed", f"{type(error).__name__}: {error}".splitlines()[0]
            if isinstance(error, UserError):
                print(f"error: {error}", file=sys.stderr)
            else:  # a bug: the traceback is what its reader needs
                log.error("job %s failed", config.hydra.job.num, exc_info=(type(error), error, error.__traceback__))
            # Hydra's sweeper re-raises the first failure once the batch ends, which would skip the summary below;
            # the failure is on record here, so mark it handled and let the sweep finish.
            job_return.status, job_return.return_value = JobStatus.COMPLETED, None
        jobs_file(config).parent.mkdir(parents=True, exist_ok=True)
        with open(jobs_file(config), "a") as f:
            f.write(json.dumps(entry) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = jobs_file(config)
        jobs = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        failed = [j for j in jobs if j["status"] == "failed"]
        shared = set.intersection(*(set(j["overrides"]) for j in jobs)) if len(jobs) > 1 else set()

        def name(job: dict) -> str:  # what this job sweeps over (task=..., model=...), not what all jobs share
            return f"#{job['num']} " + " ".join(o for o in job["overrides"] if o not in shared)

        lines = [f"suite: {len(jobs) - len(failed)} of {len(jobs)} job(s) succeeded in "
                 f"{duration(sum(j['seconds'] for j in jobs))} (details in {path})"]
        lines += [f"  {name(j)}: {j['status']} in {duration(j['seconds'])}" for j in jobs]
        if failed:
            lines.append("failed:")
            lines += [f"  {name(j)}: {j['error']}" for j in failed]
        print("\n".join(lines))
        if failed:
            sys.exit(1)


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
