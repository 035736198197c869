"""The suite's entry point (`python run.py --help` lists the modes, tasks and variants).

    python run.py task=sentiment                          train, evaluate, record in the leaderboard
    python run.py task=sentiment mode=predict run_dir=DIR text="a gripping, funny film"
    python run.py mode=attention run_dir=DIR [out=PNG] [text=...]   what attention looks at on one test example
    python run.py -m 'task=glob(*)' [model=small,small_rope]   every task in turn, failures listed at the end
    python run.py mode=leaderboard [leaderboard.view=suite|runs] [leaderboard.format=table|markdown|json|html]
    python run.py mode=record run_dir=DIR                 put a finished run into the leaderboard (once)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from core import leaderboard, leaderboard_page, runs
from core.task import UserError, load_run, saved_config

log = logging.getLogger("run")
PREDICT_KEYS_FROM_SAVED = ("task", "model", "data", "trainer")  # what a saved run fixes; the rest comes from the CLI


def quiet_libraries() -> None:
    """Keep the terminal to our progress bar: no per-map bars from datasets, no per-file lines from accelerate."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
    for name in ("accelerate", "datasets", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)


def log_to_stderr() -> None:
    """Move Hydra's console log (stdout in conf/config.yaml) to stderr, so stdout holds only what the mode prints."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def train(cfg: DictConfig) -> float | None:
    """Train as configured; return the best validation value of the task's headline metric (what a sweeper tunes)."""
    hydra_cfg = HydraConfig.get()
    sweep_dir = Path(hydra_cfg.runtime.output_dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    result = runs.train(cfg, list(hydra_cfg.overrides.task), hydra_cfg.runtime.choices.get("model", "custom"),
                        sweep_dir)
    log.info("objective: best validation %s = %s (%s is better)", result["headline"], result["best"],
             "higher" if result["greater_is_better"] else "lower")
    return result["best"]


def load_saved_run(cfg: DictConfig):
    """The task and model of the saved run at `run_dir`, its task, model, data and trainer settings as saved."""
    if not cfg.run_dir:
        raise UserError(f"mode={cfg.mode} needs run_dir=<a saved run folder>")
    run_dir = Path(cfg.run_dir)
    saved = saved_config(run_dir)
    chosen = [o.split("=", 1)[1] for o in HydraConfig.get().overrides.task if o.startswith("task=")]
    if chosen and chosen[0] != saved.task.name:
        raise UserError(f"{run_dir} holds a {saved.task.name} model, not {chosen[0]}: use task={saved.task.name}")
    if saved.task.name != cfg.task.name:  # no task= given: compose the saved task's config (its keys, its defaults)
        cfg = hydra.compose("config", overrides=[*HydraConfig.get().overrides.task, f"task={saved.task.name}"])
    merged = OmegaConf.merge(cfg, {k: saved[k] for k in PREDICT_KEYS_FROM_SAVED if k in saved})
    return *load_run(run_dir, merged), run_dir


def predict(cfg: DictConfig) -> None:
    """Reload a saved run and print one line per input."""
    task, model, _ = load_saved_run(cfg)
    for line in task.predict(model, task.read_inputs()):
        print(line)


def attention(cfg: DictConfig) -> None:
    """Reload a saved run and draw what its attention looks at on one input (the first test example by default)."""
    task, model, run_dir = load_saved_run(cfg)
    inputs = task.read_inputs() if any(cfg.get(key) for key in task.input_keys) else None
    path = task.attention(model, inputs, Path(cfg.out or run_dir / "attention.png"))
    print(f"attention picture written to {path.resolve()}")


def show_leaderboard(cfg: DictConfig) -> None:
    """Print the leaderboard in the chosen view and format; `html` writes one page and prints where."""
    lb = cfg.leaderboard
    view = lb.view or ("runs" if lb.format == "json" else "suite")  # JSON: the per-run rows scripts read
    if view not in ("suite", "runs"):
        raise UserError(f"leaderboard.view={lb.view!r}: choose suite (one row per model variant) or runs")
    if lb.format not in ("table", "markdown", "json", "html"):
        raise UserError(f"leaderboard.format={lb.format!r}: choose table, markdown, json or html")
    try:
        rows = leaderboard.rows(Path(lb.path))
        if lb.format == "html":
            page = leaderboard_page.write(Path(lb.output or Path(lb.path).with_suffix(".html")), rows,
                                          runs.references(cfg))
            print(f"leaderboard page written to {page.resolve()} ({len(rows)} runs)")
        else:
            print(leaderboard.render(rows, lb.format, view, runs.references(cfg)))
    except (leaderboard.StoreError, OSError) as e:
        raise UserError(str(e)) from None


MODES = {"train": train, "predict": predict, "attention": attention, "leaderboard": show_leaderboard,
         "record": runs.record_saved}


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    quiet_libraries()
    if cfg.mode in ("predict", "attention"):
        log_to_stderr()
    try:
        if cfg.mode not in MODES:
            raise UserError(f"mode={cfg.mode!r}: choose {', '.join(MODES)}")
        return MODES[cfg.mode](cfg)
    except UserError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # core.suite.SuiteReport prints it, lets the sweep go on and lists it at the end
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
