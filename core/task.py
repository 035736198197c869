"""The task interface: what `tasks/<name>.py` gives the runner, and how the runner finds it by name."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from torch.utils.data import DataLoader

from core.transformer import TransformerConfig

log = logging.getLogger(__name__)
TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"


class UserError(Exception):
    """Something the user can fix (a path, a value, a file); the runner prints it as one line."""


def available_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_task(cfg: DictConfig) -> Task:
    """Import `tasks.<cfg.task.name>` and build its `Task` (big_vision-style lookup by name, no registry)."""
    name = cfg.task.name
    if name not in available_tasks():
        raise UserError(f"unknown task {name!r}; available: {', '.join(available_tasks())}")
    return importlib.import_module(f"tasks.{name}").Task(cfg)


def to_dataclass(node: DictConfig, cls: type, prefix: str):
    """Validate a config group against its dataclass; a wrong type or unknown key is named in one line."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), node))
    except OmegaConfBaseException as e:
        key = f"{prefix}.{e.full_key}" if getattr(e, "full_key", None) else prefix
        raise UserError(f"bad value for {key}: {str(getattr(e, 'msg', e)).splitlines()[0]}") from None
    except ValueError as e:  # the dataclass's own __post_init__ checks
        raise UserError(str(e)) from None


def model_config(cfg: DictConfig) -> TransformerConfig:
    """The `model` config group as the core's dataclass."""
    return to_dataclass(cfg.model, TransformerConfig, "model")


class Task:
    """Base class of every task: data, model (stem -> shared core -> head), metrics and prediction.

    A subclass sets `metric` (the headline metric, used to keep the best checkpoint and in the leaderboard) and
    implements the methods that raise NotImplementedError. The training loop only ever calls these methods and
    `model(**batch)["loss"]`, so it never knows which task it runs.
    """

    metric: str = "accuracy"
    greater_is_better: bool = True

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.model_cfg = model_config(cfg)

    # -- training side -------------------------------------------------------------------------------------------
    def prepare(self, run_dir: Path, is_main: bool) -> None:
        """Load the data and fit what is learned from it (tokenizer, label set), saving it into `run_dir`.

        Called on the main process first, then on the others, which may read what the main one saved."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """The task model; its forward(**batch) returns a dict with "loss" whenever the batch has targets."""
        raise NotImplementedError

    def dataloader(self, split: str, train: bool) -> DataLoader:
        """Batches of `split` ("train", "validation", "test"); shuffled and augmented when `train`."""
        raise NotImplementedError

    def eval_step(self, model: nn.Module, batch: dict) -> list:
        """One record per example (for instance (prediction, reference)); gathered across processes."""
        raise NotImplementedError

    def compute_metrics(self, records: list) -> dict[str, float]:
        """Metrics by plain name (`accuracy`, `bleu`, ...) over every record of a split."""
        raise NotImplementedError

    def model_extras(self) -> dict:
        """What config.json should record besides the core's config (vocabulary size, label names, ...)."""
        return {}

    def dataset_name(self) -> str:
        return str(self.cfg.data.get("dir") or self.cfg.data.get("hub_id"))

    # -- prediction side -----------------------------------------------------------------------------------------
    def load_assets(self, run_dir: Path) -> None:
        """Reload what `prepare` saved (tokenizer, labels) so that `build_model` and `predict` work."""
        raise NotImplementedError

    def predict(self, model: nn.Module, inputs: list) -> list[str]:
        """One printable line per input."""
        raise NotImplementedError

    def attention(self, model: nn.Module, inputs: list | None, path: Path) -> Path:
        """Draw what attention looks at on the first input (`inputs` from `read_inputs`; None: the first test
        example) into the PNG `path`, and return it. Tasks without such a picture keep this default."""
        raise UserError(f"task {self.cfg.task.name} has no attention picture")

    def read_inputs(self) -> list:
        """Inputs for `mode=predict`: `text=...` (one input) or `input=<file>` (one input per line)."""
        if self.cfg.get("input"):
            path = Path(self.cfg.input)
            if not path.is_file():
                raise UserError(f"input file {path} not found")
            return path.read_text(encoding="utf-8").splitlines()
        if self.cfg.get("text") is not None:
            return [str(self.cfg.text)]
        raise UserError('mode=predict needs text="..." or input=<file with one input per line>')


# -- saved models (the transformers layout: config.json + model.safetensors beside the tokenizer files) -----------


def save_weights(model: nn.Module, run_dir: Path, info: dict) -> None:
    save_model(model, str(run_dir / "model.safetensors"))
    (run_dir / "config.json").write_text(json.dumps(info, indent=2))


def load_weights(model: nn.Module, run_dir: Path) -> nn.Module:
    path = run_dir / "model.safetensors"
    if not path.is_file():
        raise UserError(f"no model.safetensors in {run_dir}: did its training finish? (point run_dir at a saved run)")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise UserError(f"{path} is corrupt or does not fit this model ({str(e).splitlines()[0]}); retrain it or "
                        f"point run_dir at another run") from None
    if missing or unexpected:
        raise UserError(f"{path} does not fit the model in {run_dir}/config.yaml "
                        f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    return model.eval()


def saved_config(run_dir: Path) -> DictConfig:
    """The resolved config a training run saved in its folder."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a saved run (no config.yaml); point at a folder under outputs/runs")
    return OmegaConf.load(run_dir / "config.yaml")


def load_run(run_dir: Path, cfg: DictConfig | None = None) -> tuple[Task, nn.Module]:
    """The task and trained model of a saved run, ready for inference; `cfg` defaults to the run's saved config."""
    task = load_task(cfg if cfg is not None else saved_config(run_dir))
    task.load_assets(run_dir)
    return task, load_weights(task.build_model(), run_dir)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def device_name(device: torch.device, num_processes: int) -> str:
    """Human-readable device for the leaderboard, e.g. `cpu x2` or `NVIDIA H100 80GB HBM3`."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return name if num_processes == 1 else f"{name} x{num_processes}"
