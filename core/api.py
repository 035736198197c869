"""The suite from Python, without the command line: train with the overrides `run.py` takes, open a run, predict,
read the leaderboard as a pandas DataFrame.

    from core import api
    result = api.train("sentiment", "model=tiny", "trainer.max_steps=200")   # what `python run.py ...` does
    print(api.predict(result["run_dir"], ["a gripping, funny film"]))        # mode=predict's lines
    task, model = api.load(result["run_dir"])                                # the task and its transformers model
    frame = api.leaderboard()                                                # one row per run
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from core import leaderboard as store
from core import runs
from core.task import Task, load_run

CONF = Path(__file__).resolve().parent.parent / "conf"


def config(task: str, *overrides: str) -> tuple[DictConfig, str]:
    """The resolved config of `python run.py task=<task> OVERRIDES` and the model variant it chose."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"task={task}", *overrides], return_hydra_config=True)
    choice = cfg.hydra.runtime.choices.get("model", "custom")
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choice


def train(task: str, *overrides: str) -> dict:
    """Train, test and record a run as `python run.py task=<task> OVERRIDES` does; returns its test metrics, best
    validation value (`best`), steps, parameters and `run_dir`."""
    cfg, choice = config(task, *overrides)
    return runs.train(cfg, [f"task={task}", *overrides], choice)


def load(run_dir: str | Path) -> tuple[Task, object]:
    """The task (its tokenizer, labels, predict code) and the trained model of a run folder."""
    return load_run(Path(run_dir))


def predict(run_dir: str | Path, inputs: list) -> list[str]:
    """What `mode=predict` prints for these inputs (texts, or the paths a task reads), one line per input."""
    task, model = load(run_dir)
    return task.predict(model, list(inputs))


def leaderboard(path: str | Path = "outputs/leaderboard.db") -> pd.DataFrame:
    """Every recorded run, one row each: the leaderboard's stable fields, each test metric as a column."""
    rows = store.rows(Path(path))
    frame = pd.DataFrame([{k: r[k] for k in store.FIELDS if k not in ("metrics", "config")} for r in rows])
    metrics = pd.DataFrame([r["metrics"] for r in rows])
    return pd.concat([frame, metrics], axis=1) if rows else frame
