"""The task interface: what `tasks/<name>.py` gives the runner, how the runner finds it by name, and saved runs.

A task is its data, its metric and its predict code. Its model is one of the shared heads (`core/heads.py`,
`core/tagging.py`, `core/seq2seq.py`, `core/forecaster.py`) on the shared core, configured by the `model` group
(the core) and by the task (its stem and head fields of `core.modeling.SuiteConfig`).
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from core.modeling import SuiteConfig, SuitePreTrainedModel
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


@dataclass
class ModelConfig(TransformerConfig):
    """The `model` group: the core's fields (`conf/model/*.yaml`), optionally a published checkpoint to start from."""

    pretrained: str | None = None  # a checkpoint folder (config.json + model.safetensors) or a Hub id: its core,
    #                                stem and tokenizer replace the fields above (core/checkpoints.py), then fine-tune

    def core(self) -> dict:
        """The core's fields alone (what SuiteConfig takes)."""
        return {f.name: getattr(self, f.name) for f in fields(TransformerConfig)}


def model_config(cfg: DictConfig) -> ModelConfig:
    """The `model` group as its dataclass."""
    return to_dataclass(cfg.model, ModelConfig, "model")


class Task:
    """Base class of every task: data, metrics and prediction around one shared head.

    A subclass sets `metric` (the headline metric: it picks the best checkpoint and heads the leaderboard), `head`
    (the model class), `Config` (the dataclass of its `task` group) and implements the methods that raise
    NotImplementedError. The training loop only calls these methods and `model(**batch)["loss"]`.
    """

    metric: ClassVar[str] = "accuracy"
    greater_is_better: ClassVar[bool] = True
    head: ClassVar[type[SuitePreTrainedModel]]
    Config: ClassVar[type | None] = None  # the typed `task` group; None: the YAML as it is
    input_keys: ClassVar[tuple[str, ...]] = ("text", "input")  # what mode=predict/attention read instead of test data
    pipeline_tag: ClassVar[str | None] = None  # the Hub's name of the task where the head's pipeline tag is not it
    fine_tunes: ClassVar[bool] = False  # prepare() takes a checkpoint's tokenizer/processor under model.pretrained

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.config = to_dataclass(cfg.task, self.Config, "task") if self.Config else cfg.task
        self.model_cfg = model_config(cfg)
        if self.model_cfg.pretrained and not self.fine_tunes:
            raise UserError(f"task {cfg.task.name} does not take model.pretrained yet (its preprocessing would not be "
                            f"the checkpoint's): README, Pretrained checkpoints, lists the tasks that do")

    # -- training side -------------------------------------------------------------------------------------------
    def prepare(self, run_dir: Path, is_main: bool) -> None:
        """Load the data and fit what is learned from it (tokenizer, label set), saving it into `run_dir`.

        Called on the main process first, then on the others, which may read what the main one saved."""
        raise NotImplementedError

    def model_fields(self) -> dict:
        """The stem's and head's fields of SuiteConfig for this task's data (vocabulary, labels, image size, ...)."""
        raise NotImplementedError

    @cached_property
    def checkpoint(self):
        """The published checkpoint of `model.pretrained` (core.checkpoints.Checkpoint), or None."""
        if not self.model_cfg.pretrained:
            return None
        from core.checkpoints import open_checkpoint  # imports this module: not at the top

        return open_checkpoint(self.model_cfg.pretrained)

    def build_model(self) -> SuitePreTrainedModel:
        """The model: the `model` group's core with this task's stem and head, freshly initialised, or holding the
        weights of `model.pretrained` (whose core and stem then replace the group's)."""
        fields = {**self.model_cfg.core(), **self.model_fields(),
                  "suite": {"task": self.cfg.task.name, "dataset": self.dataset_name()}}
        if self.checkpoint is not None:
            return self.checkpoint.build(self.head, fields)
        return self.head(SuiteConfig(**fields))

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        """Batches of `split` ("train", "validation", "test"); shuffled and augmented when `train`."""
        raise NotImplementedError

    def eval_step(self, model: nn.Module, batch: dict) -> list:
        """One record per example (for instance (prediction, reference)); gathered across processes."""
        raise NotImplementedError

    def compute_metrics(self, records: list) -> dict[str, float]:
        """Metrics by plain name (`accuracy`, `bleu`, ...) over every record of a split."""
        raise NotImplementedError

    def dataset_name(self) -> str:
        return str(self.cfg.data.get("dir") or self.cfg.data.get("hub_id"))

    def variant_tags(self) -> list[str]:
        """What this run's recipe adds to the model's name in the leaderboard (e.g. `teachers=3`, `pretrained`)."""
        return ["pretrained"] if self.model_cfg.pretrained else []

    # -- prediction side -----------------------------------------------------------------------------------------
    def load_assets(self, run_dir: Path) -> None:
        """Reload what `prepare` saved (tokenizer, labels) so that `predict` works."""
        raise NotImplementedError

    def load_model(self, run_dir: Path) -> SuitePreTrainedModel:
        """The trained model of a run folder (transformers' `from_pretrained`), in eval mode."""
        return load_pretrained(self.head, run_dir)

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
            lines = read_lines(Path(self.cfg.input))
            if not any(line.strip() for line in lines):
                raise UserError(f"input file {self.cfg.input} holds no input: give one per line")
            return lines
        if self.cfg.get("text") is not None:
            if not str(self.cfg.text).strip():
                raise UserError('text= is empty: give the input to predict, e.g. text="a gripping, funny film"')
            return [str(self.cfg.text)]
        raise UserError('mode=predict needs text="..." or input=<file with one input per line>')


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file given as input, or one clear error."""
    if not path.is_file():
        raise UserError(f"input file {path} not found")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"input file {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") \
            from None


# -- saved models: a run folder is a transformers model folder (config.json, model.safetensors, modeling files) -----


def save_weights(model: nn.Module, run_dir: Path, state_dict: dict | None = None) -> None:
    """Save a suite model as transformers does (loadable by `from_pretrained`); a plain module as safetensors.
    `state_dict`: the weights gathered from every rank (FSDP, ZeRO-3); None: the model's own."""
    if isinstance(model, PreTrainedModel):
        model.save_pretrained(run_dir, state_dict=state_dict)
    else:
        save_model(model, str(run_dir / "model.safetensors"))


def load_weights(model: nn.Module, run_dir: Path) -> nn.Module:
    """Load `run_dir/model.safetensors` into an existing model (the training loop's best checkpoint)."""
    path = run_dir / "model.safetensors"
    if not path.is_file():
        raise UserError(f"no model.safetensors in {run_dir}: did its training finish? (point run_dir at a saved run)")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise UserError(f"{path} is corrupt or does not fit this model ({str(e).splitlines()[0]}); retrain it or "
                        f"point run_dir at another run") from None
    if missing or unexpected:
        raise UserError(f"{path} does not fit the model in {run_dir}/config.json "
                        f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    return model.eval()


def load_pretrained(cls: type[PreTrainedModel], run_dir: Path) -> PreTrainedModel:
    """`cls.from_pretrained(run_dir)` with a missing, corrupt or foreign folder answered in one line."""
    for name in ("config.json", "model.safetensors"):
        if not (run_dir / name).is_file():
            raise UserError(f"no {name} in {run_dir}: did its training finish? (point run_dir at a saved run)")
    try:
        config = SuiteConfig.from_pretrained(run_dir)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{run_dir}/config.json is corrupt or not a suite model's ({str(e).splitlines()[0]}); "
                        f"retrain it or point run_dir at another run") from None
    try:
        return cls.from_pretrained(run_dir, config=config).eval()
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise UserError(f"{run_dir}/model.safetensors is corrupt or does not fit its config.json "
                        f"({str(e).splitlines()[0]}); retrain it or point run_dir at another run") from None


def saved_config(run_dir: Path) -> DictConfig:
    """The resolved config a training run saved in its folder."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a saved run (no config.yaml); point at a folder under outputs/runs")
    return OmegaConf.load(run_dir / "config.yaml")


def load_saved(cls, run_dir: Path, what: str):
    """`cls.from_pretrained(run_dir)` (a tokenizer, feature extractor, processor of a saved run), or one UserError
    naming the run folder and the file it lacks."""
    try:
        return cls.from_pretrained(run_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"{run_dir} lacks a readable {what} ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                        f"; retrain it or point run_dir at another run") from None


def load_run(run_dir: Path, cfg: DictConfig | None = None) -> tuple[Task, SuitePreTrainedModel]:
    """The task and trained model of a saved run, ready for inference; `cfg` defaults to the run's saved config."""
    if (run_dir / "FAILED").is_file():
        error = (run_dir / "FAILED").read_text().strip()
        raise UserError(f"{run_dir} holds a run that failed ({error}); resume it with trainer.resume=true or train "
                        f"it again")
    task = load_task(cfg if cfg is not None else saved_config(run_dir))
    task.load_assets(run_dir)
    return task, task.load_model(run_dir)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def device_name(device: torch.device, num_processes: int) -> str:
    """Human-readable device for the leaderboard, e.g. `cpu x2` or `NVIDIA H100 80GB HBM3`."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return name if num_processes == 1 else f"{name} x{num_processes}"


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
