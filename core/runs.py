"""Run folders: where a training run goes, what may be written into an existing one, how a failure is left behind,
and how a finished run is recorded (metrics.json, the leaderboard row, the model card).

A run folder is finished when it holds metrics.json, resumable when it holds checkpoints/last, failed when it holds
FAILED (the error, beside whatever checkpoint survived). Nothing here overwrites a finished or resumable run unless
the user asked to resume it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from core import leaderboard
from core.model_card import write_model_card
from core.task import Task, UserError, device_name, load_task, saved_config
from core.transformer import TransformerConfig

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
SHAPE = [f for f in TransformerConfig.__dataclass_fields__ if f not in ("dropout", "attn_dropout")]  # the network


def installed_or_hub(package: str, subfolder: str, hub_id: str) -> str:
    """A checkpoint shipped as a Python package (offline) when that package is installed, else its Hub id
    (conf/model/minilm_l6.yaml)."""
    spec = importlib.util.find_spec(package)
    return str(Path(spec.origin).parent / subfolder) if spec and spec.origin else hub_id


OmegaConf.register_new_resolver("installed_or_hub", installed_or_hub, replace=True)


def new_run_dir(task: str, model: str) -> Path:
    """A fresh folder name; the process id keeps apart runs started in the same second (seeds side by side)."""
    return Path(f"outputs/runs/{time.strftime('%Y-%m-%d_%H-%M-%S')}_{task}_{model}_{os.getpid()}")


def check_run_dir(run_dir: Path, cfg: DictConfig, resume: bool) -> None:
    """Refuse, before anything is written, to train into a folder that holds a run unless resuming it, and to resume
    what cannot be resumed (no checkpoint there, another task or network). A finished run may be resumed to train
    further (more steps or epochs): its leaderboard row is then replaced, not repeated."""
    finished, resumable = (run_dir / "metrics.json").is_file(), (run_dir / "checkpoints" / "last").is_dir()
    if not resume:
        if finished or resumable or (run_dir / "model.safetensors").is_file():
            raise UserError(f"{run_dir} already holds a {'finished' if finished else 'started'} run: continue it with "
                            f"trainer.resume=true, or give a new run_dir (nothing was written)")
        return
    if not resumable:
        raise UserError(f"trainer.resume=true but {run_dir} holds no checkpoint (checkpoints/last); start the run "
                        f"without resume")
    saved = saved_config(run_dir)
    if saved.task.name != cfg.task.name:
        raise UserError(f"{run_dir} holds a {saved.task.name} run, not {cfg.task.name}: resume it with "
                        f"task={saved.task.name}")
    changed = [f for f in SHAPE if saved.model.get(f) != cfg.model.get(f)]
    if changed:
        f = changed[0]
        raise UserError(f"{run_dir} was trained with model.{f}={saved.model.get(f)}, not {cfg.model.get(f)}: resume "
                        f"it with the same model settings")
    budget = ("max_steps", "epochs", "max_minutes")
    if finished and all(saved.trainer.get(k) == cfg.trainer.get(k) for k in budget):
        raise UserError(f"{run_dir} is finished with these settings: raise trainer.max_steps, trainer.epochs or "
                        f"trainer.max_minutes to train it further (nothing was written)")


def mark_failed(run_dir: Path, fresh: bool, error: BaseException) -> None:
    """After a failure: remove a folder this run created when nothing worth keeping is in it, else leave FAILED in it
    (the error), so that no tool takes it for a model and `trainer.resume=true` can still continue its checkpoint."""
    if fresh and not (run_dir / "checkpoints" / "last").is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)
    elif run_dir.is_dir():
        (run_dir / "FAILED").write_text(f"{type(error).__name__}: {error}\n")


def code_version() -> str | None:
    """The commit the code is at, `+dirty` when the tree differs from it (a new, uncommitted task counts)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal", "--", "core", "tasks",
                                "conf", "run.py"], capture_output=True, text=True, cwd=ROOT, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if head and dirty else head or None


def record_run(cfg: DictConfig, task: Task, result: dict, run_dir: Path, variant: str, accelerator,
               overrides: list[str]) -> dict:
    """metrics.json, the model card and the leaderboard row of a finished run (main process only)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config.get("leaderboard", {}).pop("references", None)  # the same for every run: kept once, in conf/leaderboard/
    earlier = run_dir / "metrics.json"  # a finished run trained further keeps its id: its row is replaced
    run_id = json.loads(earlier.read_text())["run_id"] if earlier.is_file() else \
        f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.task.name}-{uuid.uuid4().hex[:6]}"
    row = {"run_id": run_id,
           "task": cfg.task.name, "dataset": task.dataset_name(), "model": variant, "metrics": result["metrics"],
           "params": result["params"], "train_seconds": result["train_seconds"],
           "samples_per_second": result["samples_per_second"], "seed": int(cfg.trainer.seed), "headline": task.metric,
           "device": device_name(accelerator.device, accelerator.num_processes),
           "created": time.strftime("%Y-%m-%d %H:%M:%S"), "run_dir": str(run_dir), "commit": code_version(),
           "config": config, "steps": result["steps"], "best_step": result["best_step"]}
    saved = {k: v for k, v in row.items() if k != "config"} | {"param_checksums": result["param_checksums"],
                                                               "best_validation": result["best"]}
    write_model_card(run_dir, row, task.model_cfg, overrides, task.head.__name__, task.head._auto_class or "AutoModel",
                     task.pipeline_tag or task.head.pipeline_tag, task.cfg.data.get("hub_id"),
                     task.model_cfg.pretrained)
    (run_dir / "metrics.json").write_text(json.dumps(saved, indent=2) + "\n")  # last: the run counts as finished
    record(Path(cfg.leaderboard.path), row, cfg)
    return row


def record(path: Path, row: dict, cfg: DictConfig) -> None:
    """One row into the leaderboard; a store that cannot be written loses nothing: the error says how to record the
    run later (`mode=record`)."""
    try:
        leaderboard.record(path, row, references(cfg))
    except leaderboard.StoreError as e:
        raise UserError(f"{e}; the run is complete in {row['run_dir']}: record it later with python run.py "
                        f"mode=record run_dir={row['run_dir']} leaderboard.path=<a writable file>") from None


def record_saved(cfg: DictConfig) -> None:
    """`mode=record`: put a finished run's metrics.json (and its config.yaml) into the leaderboard, once."""
    if not cfg.run_dir:
        raise UserError("mode=record needs run_dir=<a finished run folder>")
    run_dir = Path(cfg.run_dir)
    try:
        saved = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{run_dir} holds no readable metrics.json ({e}): only a finished run can be recorded") \
            from None
    config = OmegaConf.to_container(saved_config(run_dir), resolve=True)
    config.get("leaderboard", {}).pop("references", None)
    row = {k: saved.get(k) for k in leaderboard.FIELDS if k != "config"} | {"config": config}
    if any(r["run_id"] == row["run_id"] for r in leaderboard.rows(Path(cfg.leaderboard.path))):
        print(f"run {row['run_id']} is already in {cfg.leaderboard.path}")
        return
    record(Path(cfg.leaderboard.path), row, cfg)
    print(f"run {row['run_id']} recorded in {cfg.leaderboard.path}")


def train(cfg: DictConfig, overrides: list[str], model_choice: str, sweep_dir: Path | None = None) -> dict:
    """Train the task, score the best checkpoint on test, save everything in the run folder, record the run.

    `overrides` are the command line's (they name the variant and go into the model card); `sweep_dir` is the job's
    folder under a Hydra sweep. Every setting is validated before any folder is created."""
    import torch
    from accelerate import Accelerator, DataLoaderConfiguration, PartialState
    from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed

    from core.train import fit, resolve_precision, trainer_config

    t = trainer_config(cfg)
    cpu = not torch.cuda.is_available()  # Accelerate joins a CPU process group (gloo) only when told it is on CPU
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")  # accelerate launch --mixed_precision / its config
    precision = resolve_precision(t.mixed_precision, cpu, None if launcher == "no" else launcher)
    set_seed(t.seed)
    task = load_task(cfg)  # validates the task and model groups
    variant = model_variant(model_choice, overrides, task)
    state = PartialState(cpu=cpu)  # joins the process group under torchrun / accelerate launch
    if not state.is_main_process:  # only rank 0 speaks; the others' warnings and errors still show
        logging.getLogger().setLevel(logging.WARNING)
    named = variant.split("+")[0]  # the model config's name, or the checkpoint's under model.pretrained=
    chosen = Path(cfg.run_dir) if cfg.run_dir else sweep_dir or new_run_dir(cfg.task.name, named)
    run_dir = Path(broadcast_object_list([str(chosen.resolve())])[0])  # rank 0's choice on every rank
    check_run_dir(run_dir, cfg, t.resume)
    fresh = not run_dir.exists() or not any(run_dir.iterdir())
    finished = (run_dir / "metrics.json").is_file()  # trained further: a failure leaves the finished run as it was
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "FAILED").unlink(missing_ok=True)  # resuming a failed run: it is running again
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, gradient_accumulation_steps=t.grad_accum,
                              log_with=list(t.log_with) or None,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
                              project_config=ProjectConfiguration(project_dir=str(run_dir),
                                                                  logging_dir=str(run_dir / "logs")))
    handler = logging.FileHandler(run_dir / "train.log") if state.is_main_process else logging.NullHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        with accelerator.main_process_first():
            task.prepare(run_dir, accelerator.is_main_process)
        if accelerator.is_main_process:
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        accelerator.init_trackers("transformer-suite", config=hyperparameters(cfg),
                                  init_kwargs={"wandb": {"name": run_dir.name}, "mlflow": {"run_name": run_dir.name}})
        log.info("run folder %s (precision %s, %d process(es) on %s)", run_dir, accelerator.mixed_precision,
                 accelerator.num_processes, accelerator.device)
        result = fit(task, t, accelerator, run_dir)
        row = record_run(cfg, task, result, run_dir, variant, accelerator, overrides) \
            if accelerator.is_main_process else None
    except BaseException as e:
        if accelerator.is_main_process and not finished:
            mark_failed(run_dir, fresh, e)
        raise
    finally:
        accelerator.end_training()
        logging.getLogger().removeHandler(handler)  # the next job of a sweep logs into its own folder
        handler.close()
    if row is not None:
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
        print(f"test {metrics}\nrun saved in {run_dir} (leaderboard: {cfg.leaderboard.path}, run_id {row['run_id']})")
    return {**result, "run_dir": run_dir, "run_id": row and row["run_id"], "headline": task.metric,
            "greater_is_better": task.greater_is_better}


def model_variant(choice: str, overrides: list[str], task: Task) -> str:
    """What the leaderboard compares: the model config's name (`small`, `small_rope`, ...), or the checkpoint's when
    `model.pretrained=` is given, followed by the `model.<field>=<value>` overrides of the command line
    (`small+position=rope`), so that sweeping a field gives one variant per value instead of merging them, and by
    what the task's recipe adds (`+pretrained`, `+teachers=3` for a model distilled from three saved runs)."""
    fields = [o.lstrip("+~").removeprefix("model.") for o in overrides if o.lstrip("+~").startswith("model.")]
    name = choice
    if any(f.startswith("pretrained=") for f in fields):
        name, fields = task.checkpoint.name, [f for f in fields if not f.startswith("pretrained=")]
    return "+".join([name, *sorted(fields + task.variant_tags())])


def hyperparameters(cfg: DictConfig) -> dict:
    """The resolved config, flat (`trainer.lr`), in the scalar types every tracker takes."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config.get("leaderboard", {}).pop("references", None)
    flat = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk(config, "")
    return flat


def references(cfg: DictConfig) -> dict:
    """The normalised scores' baselines and references, per task and dataset (conf/leaderboard/default.yaml)."""
    return OmegaConf.to_container(cfg.leaderboard.get("references") or {}, resolve=True)
