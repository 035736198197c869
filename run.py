"""The suite's entry point.

    python run.py task=sentiment                          train, evaluate, record in the leaderboard
    python run.py task=sentiment mode=predict run_dir=DIR text="a gripping, funny film"
    python run.py mode=attention run_dir=DIR [out=PNG] [text=...]   what attention looks at on one test example
    python run.py -m 'task=glob(*)' [model=small,small_rope]   every task in turn, failures listed at the end
    python run.py mode=leaderboard [leaderboard.view=suite|runs] [leaderboard.format=table|markdown|json|html]
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from core import leaderboard, leaderboard_page
from core.task import UserError, device_name, load_run, load_task, saved_config

log = logging.getLogger("run")
PREDICT_KEYS_FROM_SAVED = ("task", "model", "data", "trainer")  # what a saved run fixes; the rest comes from the CLI


def suite_run_dir(mode: str, run_dir: str | None, task: str, model: str) -> str:
    """Where Hydra puts this job: a fresh timestamped folder for training, the given run to resume it."""
    if mode != "train":  # predict, attention and leaderboard write nothing: Hydra must not create a folder at run_dir
        return "outputs"
    if run_dir:
        return str(run_dir)
    if int(os.environ.get("RANK", "0")) > 0:  # DDP: only rank 0 names the run; the others are told its folder
        return tempfile.gettempdir()
    # the process id keeps apart runs started in the same second (a script launching seeds side by side)
    return f"outputs/runs/{time.strftime('%Y-%m-%d_%H-%M-%S')}_{task}_{model}_{os.getpid()}"


def installed_or_hub(package: str, subfolder: str, hub_id: str) -> str:
    """A checkpoint shipped as a Python package (offline) when that package is installed, else its Hub id."""
    spec = importlib.util.find_spec(package)
    return str(Path(spec.origin).parent / subfolder) if spec and spec.origin else hub_id


OmegaConf.register_new_resolver("suite_run_dir", suite_run_dir, replace=True)
OmegaConf.register_new_resolver("installed_or_hub", installed_or_hub, replace=True)


def quiet_libraries() -> None:
    """Keep the terminal to our progress bar: no per-map bars from datasets, no per-file lines from accelerate."""
    import datasets

    datasets.disable_progress_bars()
    for name in ("accelerate", "datasets", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)


def log_to_stderr() -> None:
    """Move Hydra's console log (stdout in conf/config.yaml) to stderr, so stdout holds only what the mode prints."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def train(cfg: DictConfig) -> dict:
    """Train the task, score the best checkpoint on test, save everything in the run folder, record the run."""
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.utils import broadcast_object_list, set_seed

    from core.train import fit, resolve_precision, trainer_config

    cpu = not torch.cuda.is_available()  # Accelerate joins a CPU process group (gloo) only when told it is on CPU
    state = PartialState(cpu=cpu)  # joins the process group under torchrun / accelerate launch
    run_dir = Path(broadcast_object_list([HydraConfig.get().runtime.output_dir])[0]).resolve()
    fresh = not (run_dir / "checkpoints").exists()  # a folder this job created, safe to remove on a setup error
    try:
        t = trainer_config(cfg)
        accelerator = Accelerator(cpu=cpu, mixed_precision=resolve_precision(t.mixed_precision, cpu),
                                  gradient_accumulation_steps=t.grad_accum, log_with="tensorboard",
                                  project_dir=str(run_dir))
        set_seed(t.seed)
        task = load_task(cfg)
        with accelerator.main_process_first():
            task.prepare(run_dir, accelerator.is_main_process)
    except UserError:
        if fresh and state.is_main_process and not cfg.run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    handler = logging.FileHandler(run_dir / "train.log") if accelerator.is_main_process else logging.NullHandler()
    if accelerator.is_main_process:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    accelerator.init_trackers("tensorboard")
    log.info("run folder %s (precision %s, %d process(es) on %s)", run_dir, accelerator.mixed_precision,
             accelerator.num_processes, accelerator.device)
    try:
        result = fit(task, t, accelerator, run_dir)
    finally:
        accelerator.end_training()
        logging.getLogger().removeHandler(handler)  # the next job of a sweep logs into its own folder
        handler.close()
    if accelerator.is_main_process:
        config = OmegaConf.to_container(cfg, resolve=True)
        config.get("leaderboard", {}).pop("references", None)  # the same for every run: kept once, in conf/leaderboard/
        row = {"run_id": f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.task.name}-{uuid.uuid4().hex[:6]}",
               "task": cfg.task.name, "dataset": task.dataset_name(), "model": model_variant(cfg, task),
               "metrics": result["metrics"], "params": result["params"], "train_seconds": result["train_seconds"],
               "samples_per_second": result["samples_per_second"], "seed": t.seed, "headline": task.metric,
               "device": device_name(accelerator.device, accelerator.num_processes),
               "created": time.strftime("%Y-%m-%d %H:%M:%S"), "run_dir": str(run_dir), "commit": code_version(),
               "config": config, "steps": result["steps"], "best_step": result["best_step"]}
        saved = {k: v for k, v in row.items() if k != "config"} | {"param_checksums": result["param_checksums"]}
        (run_dir / "metrics.json").write_text(json.dumps(saved, indent=2) + "\n")
        leaderboard.record(Path(cfg.leaderboard.path), row, references(cfg))
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
        print(f"test {metrics}\nrun saved in {run_dir} (leaderboard: {cfg.leaderboard.path}, run_id {row['run_id']})")
    return result


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


def references(cfg: DictConfig) -> dict:
    """The normalised scores' baselines and references, per dataset (conf/leaderboard/default.yaml)."""
    return OmegaConf.to_container(cfg.leaderboard.get("references") or {}, resolve=True)


def show_leaderboard(cfg: DictConfig) -> None:
    """Print the leaderboard in the chosen view and format; `html` writes one page and prints where."""
    lb = cfg.leaderboard
    view = lb.view or ("runs" if lb.format == "json" else "suite")  # JSON: the per-run rows scripts read
    if view not in ("suite", "runs"):
        raise UserError(f"leaderboard.view={lb.view!r}: choose suite (one row per model variant) or runs")
    if lb.format not in ("table", "markdown", "json", "html"):
        raise UserError(f"leaderboard.format={lb.format!r}: choose table, markdown, json or html")
    runs = leaderboard.rows(Path(lb.path))
    if lb.format == "html":
        page = leaderboard_page.write(Path(lb.output or Path(lb.path).with_suffix(".html")), runs, references(cfg))
        print(f"leaderboard page written to {page.resolve()} ({len(runs)} runs)")
    else:
        print(leaderboard.render(runs, lb.format, view, references(cfg)))


def model_variant(cfg: DictConfig, task) -> str:
    """What the leaderboard compares: the model config's name (`small`, `small_rope`, ...), or the checkpoint's when
    `model.pretrained=` is given, followed by the `model.<field>=<value>` overrides of the command line
    (`small+position=rope`), so that sweeping a field gives one variant per value instead of merging them, and by
    what the task's recipe adds (`+pretrained`, `+teachers=3` for a model distilled from three saved runs)."""
    if not HydraConfig.initialized():
        return "custom"
    hydra_cfg = HydraConfig.get()
    fields = [o.lstrip("+~").removeprefix("model.") for o in hydra_cfg.overrides.task
              if o.lstrip("+~").startswith("model.")]
    name = hydra_cfg.runtime.choices.get("model", "custom")
    if any(f.startswith("pretrained=") for f in fields):
        name, fields = task.checkpoint.name, [f for f in fields if not f.startswith("pretrained=")]
    return "+".join([name, *sorted(fields + task.variant_tags())])


def code_version() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    if cfg.mode in ("predict", "attention"):
        log_to_stderr()
    try:
        if cfg.mode == "leaderboard":
            show_leaderboard(cfg)
        elif cfg.mode == "predict":
            predict(cfg)
        elif cfg.mode == "attention":
            attention(cfg)
        elif cfg.mode == "train":
            train(cfg)
        else:
            raise UserError(f"mode={cfg.mode!r}: choose train, predict, attention or leaderboard")
    except UserError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # core.suite.SuiteReport prints it, lets the sweep go on and lists it at the end
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
