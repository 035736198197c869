"""The one training loop every task uses, on Hugging Face Accelerate (one CPU or GPU, several processes or machines).

`fit` reads top to bottom as Accelerate's `nlp_example.py`: prepare, then for each batch a step, and now and then a
validation (which keeps the best weights) or a checkpoint of the whole state (which `trainer.resume=true` continues
from exactly); at the end the best weights are scored on the test split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast, gather_object
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from core.task import Task, UserError, count_parameters, load_weights, save_weights, to_dataclass

log = logging.getLogger(__name__)
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class TrainerConfig:
    """How to train; `conf/trainer/default.yaml` and each task's `trainer:` block map onto it."""

    lr: float = 5e-4  # peak learning rate of AdamW
    weight_decay: float = 0.01  # decoupled weight decay on matrices (not on biases, norms, embeddings' scale)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # Adam betas (the paper's 0.98)
    batch_size: int = 32  # examples per process per step
    eval_batch_size: int = 128  # examples per process per evaluation batch
    epochs: int = 10  # passes over the training data (unless max_steps or max_minutes stops first)
    max_steps: int = 0  # optimizer steps; 0 = from epochs
    max_minutes: float = 0.0  # time budget for training (validation, the final one too, included), on `clock`; 0 = none
    clock: str = "wall"  # what max_minutes counts: wall time, or this process's CPU time ("process": fair on a
    #                      shared machine, where other jobs take cores; with N threads a minute costs N CPU-minutes)
    head_lr_scale: float = 1.0  # under model.pretrained: what the checkpoint does not hold (the task's classifier,
    #                              CRF, char-CNN) learns at lr times this, the checkpoint's weights at lr
    warmup_steps: int = 200  # linear warm-up from 0 to lr
    warmup_max_fraction: float = 0.25  # ...ended by this fraction of the run at the latest (steps or budget), so a
    #                                     short budget (the suite's max_minutes=4) does not spend itself warming up
    schedule: str = "cosine"  # decay after warm-up over the run's progress: cosine, linear or constant
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_grad: float = 1.0  # max global gradient norm; 0 = no clipping
    mixed_precision: str = "auto"  # bf16, fp16, no, or auto: `accelerate launch --mixed_precision` if given, else
    #                                bf16 where the device computes it natively
    eval_every: int = 0  # optimizer steps between validations; 0 = once per epoch
    save_every: int = 0  # optimizer steps between checkpoints of the whole state, besides every validation; 0 = none
    save_every_minutes: float = 10.0  # ...and at most this many minutes (on `clock`) between them; 0 = none. A crash
    #                                   costs at most this much work: `trainer.resume=true` continues exactly
    patience: int = 0  # stop after this many validations without improvement; 0 = never
    sam_rho: float = 0.0  # sharpness-aware minimisation (Foret et al. 2021): take each step's gradient at the worst
    #                       weights within this L2 radius; 0 = off. Costs a second forward + backward pass per step
    ema_decay: float = 0.0  # validate, keep and test an exponential moving average of the weights; 0 = off
    log_every: int = 20  # steps between progress-bar and tracker updates
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])  # experiment trackers (Accelerate's names:
    #                      tensorboard, wandb, mlflow, trackio, ...); the resolved config goes in as hyperparameters
    seed: int = 0  # seeds Python, NumPy and torch on every process
    resume: bool = False  # continue from <run_dir>/checkpoints/last
    num_workers: int = 0  # DataLoader worker processes

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"trainer.{name}={getattr(self, name)!r}: {allowed}")

        for name in ("batch_size", "eval_batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise bad(name, "give a positive integer")
        for name in ("epochs", "max_steps", "warmup_steps", "eval_every", "save_every", "patience", "num_workers"):
            if getattr(self, name) < 0:
                raise bad(name, "give an integer >= 0")
        if self.epochs == 0 and self.max_steps == 0:
            raise bad("epochs", "with trainer.max_steps=0 the run would train no step; give epochs >= 1 or max_steps")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise bad("lr", "give a positive finite learning rate")
        if not self.head_lr_scale > 0 or not math.isfinite(self.head_lr_scale):
            raise bad("head_lr_scale", "give a positive finite multiple of trainer.lr (1 = the same)")
        for name in ("weight_decay", "clip_grad", "max_minutes", "save_every_minutes", "sam_rho"):
            if not getattr(self, name) >= 0 or not math.isfinite(getattr(self, name)):  # NaN fails both
                raise bad(name, "give a finite number >= 0 (0 = off)" if name != "sam_rho" else "give a radius >= 0 "
                          "(0 = off)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise bad("betas", "give two numbers in [0, 1), e.g. [0.9, 0.98]")
        if not 0 <= self.ema_decay < 1:
            raise bad("ema_decay", "give a decay in [0, 1) (0 = off)")
        if not 0 <= self.warmup_max_fraction <= 1:
            raise bad("warmup_max_fraction", "give a fraction of the run, 0 to 1 (0 = no cap)")
        if self.sam_rho and self.grad_accum > 1:
            raise ValueError(f"trainer.sam_rho={self.sam_rho} with trainer.grad_accum={self.grad_accum}: SAM takes "
                             "one batch per step; set grad_accum=1")
        for name, allowed in (("schedule", SCHEDULES), ("clock", CLOCKS), ("mixed_precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise bad(name, f"choose one of {', '.join(sorted(allowed))}")
        if isinstance(self.log_with, str):
            self.log_with = [self.log_with]
        for tracker in self.log_with:
            if tracker not in TRACKERS:
                raise ValueError(f"trainer.log_with={tracker!r}: choose trackers among {', '.join(TRACKERS)}")


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
SCHEDULES = {
    "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * min(p, 1.0))),
    "linear": lambda p: max(0.0, 1 - p),
    "constant": lambda p: 1.0,
}
PRECISIONS = ("auto", "bf16", "fp16", "no")


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 matmuls run ~4x faster than float32 (README)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(choice: str, use_cpu: bool, launcher: str | None = None) -> str:
    """The precision to train in. `auto` (the default) takes `accelerate launch --mixed_precision` (`launcher`) when it
    was given, else bf16 where the hardware has it and float32 elsewhere. fp16 on a CPU is refused, and so is a
    setting that contradicts the launcher's."""
    on_gpu = torch.cuda.is_available() and not use_cpu
    if launcher and choice != "auto" and launcher != choice:
        raise UserError(f"trainer.mixed_precision={choice} contradicts accelerate launch --mixed_precision {launcher}; "
                        f"drop one of them (trainer.mixed_precision=auto follows the launcher)")
    if choice == "auto":
        choice = launcher or ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if on_gpu else \
            launcher or ("bf16" if cpu_has_native_bf16() else "no")
    if choice == "fp16" and not on_gpu:
        raise UserError("mixed precision fp16 has no fast path on a CPU: use bf16 or no")
    return choice


def trainer_config(cfg) -> TrainerConfig:
    """The `trainer` config group as a validated TrainerConfig."""
    return to_dataclass(cfg.trainer, TrainerConfig, "trainer")


class TrainState:
    """Counters saved with every checkpoint so that `trainer.resume=true` continues where a run stopped."""

    def __init__(self):
        self.step = self.epoch = self.batch_in_epoch = self.samples = 0
        self.elapsed = self.step_seconds = 0.0  # training time on trainer.clock; wall time inside train steps only
        self.val_seconds = 0.0  # how long the last validation took, on trainer.clock
        self.saved_at = 0.0  # `elapsed` at the last checkpoint of the whole state
        self.best: float | None = None
        self.best_step = self.bad_evals = 0

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


class NonFiniteLoss(UserError):
    pass


def param_groups(model: torch.nn.Module, weight_decay: float, head_lr_scale: float = 1.0) -> list[dict]:
    """Decay matrices only: biases, norms and other vectors keep their scale (as in nanoGPT / BERT). Parameters a
    published checkpoint did not give (`model.fresh_parameters`: the task's head) take `lr_scale` = head_lr_scale,
    the learning rate's multiple for their group."""
    fresh = getattr(model, "fresh_parameters", set())
    groups = []
    for scale, chosen in ((1.0, lambda n: n not in fresh), (head_lr_scale, lambda n: n in fresh)):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and chosen(n)]
        groups += [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": weight_decay, "lr_scale": scale},
                   {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def evaluate(task: Task, model, loader, accelerator: Accelerator) -> dict[str, float]:
    """Run `task.eval_step` over a split on every process; score the gathered records exactly once each."""
    model.eval()
    records = []
    with accelerator.autocast():
        for batch in loader:
            records += accelerator.gather_for_metrics(task.eval_step(model, batch), use_gather_object=True)
    model.train()
    return task.compute_metrics(records)


def improved(task: Task, value: float, best: float | None) -> bool:
    return best is None or (value > best if task.greater_is_better else value < best)


def learning_rate(t: TrainerConfig, step: int, progress: float) -> float:
    """The rate for optimizer step `step` (0-based) with `progress` (0..1) of the run done: a linear warm-up that ends
    after `warmup_steps` or at `warmup_max_fraction` of the run, whichever comes first, times the decay schedule."""
    warm = max((step + 1) / max(1, t.warmup_steps), progress / t.warmup_max_fraction if t.warmup_max_fraction else 0.0)
    return t.lr * min(1.0, warm) * SCHEDULES[t.schedule](progress)


class SeededCollate:
    """A training batch's own randomness (word dropout, augmentation) drawn from generators seeded by (seed, epoch,
    batch), apart from the model's (dropout). Accelerate's loader assembles batch k + 1 before step k runs, so on one
    shared generator a resumed run, which skips to batch k + 1, could not draw what the first run drew; this way it
    does (with `trainer.num_workers=0`: workers collate on copies)."""

    def __init__(self, collate, seed: int):
        self.collate, self.seed, self.epoch, self.batch = collate, seed, 0, 0

    def start(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def __call__(self, rows: list):
        seed = (self.seed * 1_000_003 + self.epoch) * 1_000_003 + self.batch
        self.batch += 1
        states = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.collate(rows)
            finally:
                random.setstate(states[0])
                np.random.set_state(states[1])


@dataclass
class Run:
    """One training run as the loop's pieces share it: what Accelerate prepared, the counters, the clock."""

    task: Task
    t: TrainerConfig
    accelerator: Accelerator
    run_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: object
    val_loader: object | None
    state: TrainState
    ema: ModelEmaV3 | None
    params: int
    collate: SeededCollate
    total_steps: int = 0
    eval_every: int = 0
    started: float = 0.0  # on the clock, so that clock() - started is the run's elapsed time (resumes included)
    running_loss: float = 0.0
    lr: float = 0.0
    last_eval_step: int = -1
    saved_step: int = -1  # the step of the last checkpoint this process wrote
    stop: bool = False

    @property
    def clock(self):
        return CLOCKS[self.t.clock]

    @property
    def eval_model(self):
        """What is validated, kept and tested: the weights' moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last"

    def progress(self) -> float:
        budget = self.t.max_minutes * 60
        return max(self.state.step / self.total_steps, self.state.elapsed / budget if budget else 0.0)


def setup(task: Task, t: TrainerConfig, accelerator: Accelerator, run_dir: Path) -> Run:
    """The model, optimizer, data and moving average, prepared by Accelerate; the saved state when resuming."""
    run_dir.mkdir(parents=True, exist_ok=True)
    model = task.build_model()
    params = count_parameters(model)
    if isinstance(getattr(getattr(model, "config", None), "suite", None), dict):
        model.config.suite["params"] = params  # config.json says what the weights are without the code
    fused = accelerator.device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(param_groups(model, t.weight_decay, t.head_lr_scale), lr=t.lr,
                                  betas=tuple(t.betas), fused=fused)
    train_loader = task.dataloader("train", train=True)
    val_loader = task.dataloader("validation", train=False)
    if train_loader is None or len(train_loader) == 0:
        raise UserError(f"the training split gives no batch of trainer.batch_size={t.batch_size}: use more training "
                        f"data or a smaller batch")
    train_loader.generator = torch.Generator().manual_seed(t.seed)  # its seed draws stay off the global stream
    train_loader.collate_fn = collate = SeededCollate(train_loader.collate_fn, t.seed)
    if accelerator.distributed_type == DistributedType.FSDP:
        if t.ema_decay:  # timm's EMA deep-copies the model, which a sharded model refuses
            raise UserError(f"trainer.ema_decay={t.ema_decay} under FSDP: the moving average would be a whole, "
                            f"unsharded copy of the model; set trainer.ema_decay=0")
        # Accelerate wraps each `_no_split_modules` class and refuses a name the model lacks (DecoderLayer in an
        # encoder-only model)
        present = {type(m).__name__ for m in model.modules()}
        model._no_split_modules = [n for n in model._no_split_modules or [] if n in present]
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    val_loader = accelerator.prepare(val_loader) if val_loader is not None else None
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    ema = None
    if t.ema_decay:  # timm's EMA, with warm-up so that early averages are not dominated by the random init
        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=t.ema_decay, use_warmup=True)
        accelerator.register_for_checkpointing(ema)
    run = Run(task, t, accelerator, run_dir, model, optimizer, train_loader, val_loader, state, ema, params, collate)
    if t.resume:
        if not run.last_checkpoint.is_dir():
            raise UserError(f"trainer.resume=true but {run.last_checkpoint} does not exist; start the run without "
                            f"resume")
        accelerator.load_state(str(run.last_checkpoint))  # weights, optimizer, counters, EMA and every RNG
        log.info("resumed from %s at step %d", run.last_checkpoint, state.step)
    steps_per_epoch = max(1, len(train_loader) // t.grad_accum)
    run.total_steps = t.max_steps or t.epochs * steps_per_epoch
    run.eval_every = t.eval_every or steps_per_epoch
    run.last_eval_step = state.step
    run.stop = state.step >= run.total_steps
    if t.resume and run.stop and (run_dir / "metrics.json").is_file():
        raise UserError(f"{run_dir} is finished: it trained {state.step} steps, as many as this run would; raise "
                        f"trainer.max_steps or trainer.epochs to train it further")
    return run


def epoch_batches(run: Run):
    """This epoch's batches, in an order fixed by the seed and the epoch (Accelerate's seedable sampler), each with
    its own random draws (SeededCollate): a resumed run skips those the saved state had already seen and gets the rest
    exactly as the first run did."""
    loader = run.train_loader
    loader.set_epoch(run.state.epoch)
    run.collate.start(run.state.epoch, run.state.batch_in_epoch)
    if run.state.batch_in_epoch:
        loader = run.accelerator.skip_first_batches(loader, run.state.batch_in_epoch)
    return loader


def train_step(run: Run, batch: dict) -> float:
    """Forward, backward and, once every `grad_accum` micro-batches, the clipped optimizer step; returns the loss."""
    t, accelerator, model, optimizer, state = run.t, run.accelerator, run.model, run.optimizer, run.state
    tick = time.perf_counter()
    with accelerator.accumulate(model):
        loss = model(**batch)["loss"]
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            if t.sam_rho:
                def again(batch=batch):
                    optimizer.zero_grad(set_to_none=True)
                    accelerator.backward(model(**batch)["loss"])

                sam_gradients(list(model.parameters()), t.sam_rho, again)
            norm = accelerator.clip_grad_norm_(model.parameters(), t.clip_grad or float("inf"))
            if not torch.isfinite(norm):  # the norm of all-reduced gradients: every rank agrees
                kept = (f"the best checkpoint so far is kept in {run.run_dir}" if state.best is not None else
                        f"no checkpoint was kept (no validation had run); nothing to resume in {run.run_dir}")
                raise NonFiniteLoss(f"loss became non-finite at step {state.step} (loss {loss.item():.4g}); {kept}; "
                                    f"lower trainer.lr or try trainer.mixed_precision=no")
            run.lr = learning_rate(t, state.step, run.progress())
            for group in optimizer.param_groups:
                group["lr"] = run.lr * group.get("lr_scale", 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if run.ema is not None and accelerator.sync_gradients:
            run.ema.update(accelerator.unwrap_model(model), step=state.step + 1)
    state.batch_in_epoch += 1
    state.samples += len(next(iter(batch.values()))) * accelerator.num_processes
    state.step_seconds += time.perf_counter() - tick
    return loss.item() / t.grad_accum


def count_step(run: Run, bar: tqdm) -> None:
    """After an optimizer step: the counters, the shared clock, the progress bar and the trackers."""
    state, accelerator, t = run.state, run.accelerator, run.t
    state.step += 1
    state.elapsed = same_on_every_rank(accelerator, run.clock() - run.started)  # or ranks stop at different steps
    bar.update(1)
    if state.step % t.log_every == 0:
        avg, run.running_loss = run.running_loss / t.log_every, 0.0
        bar.set_postfix(loss=f"{avg:.4f}", lr=f"{run.lr:.2e}",
                        samples_s=f"{state.samples / max(state.step_seconds, 1e-9):.1f}")
        accelerator.log({"train/loss": avg, "train/lr": run.lr}, step=state.step)


def same_on_every_rank(accelerator: Accelerator, value: float) -> float:
    """Rank 0's value on every process (clocks differ a little from process to process)."""
    if accelerator.num_processes == 1:
        return value
    return broadcast(torch.tensor([value], device=accelerator.device)).item()


def validate(run: Run) -> None:
    """Score the validation split; keep the weights when they are the best so far; checkpoint the whole state."""
    task, state, accelerator = run.task, run.state, run.accelerator
    tick = run.clock()
    metrics = evaluate(task, run.eval_model, run.val_loader, accelerator)
    value = metrics[task.metric]
    accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=state.step)
    if improved(task, value, state.best):
        state.best, state.best_step, state.bad_evals = value, state.step, 0
        save_best(run)
    else:
        state.bad_evals += 1
    if accelerator.is_main_process:
        record = {"step": state.step, "epoch": state.epoch, "elapsed": round(state.elapsed, 1),
                  **{f"val/{k}": v for k, v in metrics.items()}}
        with open(run.run_dir / "history.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    if accelerator.is_main_process:  # one line per validation, not one per process
        tqdm.write(f"step {state.step}: val {task.metric} {value:.4f} (best {state.best:.4f} at {state.best_step})")
    state.val_seconds = same_on_every_rank(accelerator, run.clock() - tick)  # every rank reckons the same budget
    run.last_eval_step = state.step
    if run.t.patience and state.bad_evals >= run.t.patience:
        log.info("no improvement in %d validations: stopping early", run.t.patience)
        run.stop = True
    save_checkpoint(run)


def save_best(run: Run) -> None:
    """The kept model (transformers' layout). Every rank takes part in gathering the weights (sharded under FSDP or
    DeepSpeed ZeRO-3); the main process writes them."""
    accelerator = run.accelerator
    model = accelerator.unwrap_model(run.eval_model)
    state_dict = accelerator.get_state_dict(run.eval_model) if run.ema is None else None
    if accelerator.is_main_process:
        with own_class(model):
            save_weights(model, run.run_dir, state_dict)


@contextmanager
def own_class(model):
    """FSDP2 turns a model's class into `FSDP<Class>`, defined in torch: save_pretrained would name that class in
    config.json's auto_map and copy torch's files into the run folder. Meanwhile the model shows its own class."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    if isinstance(model, FSDPModule):
        model.__class__ = next(c for c in cls.__mro__ if not issubclass(c, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = cls


def load_best(run: Run) -> None:
    """Every process loads the best weights the main process saved (the run folder is shared). Under FSDP the main
    process reads the file and each process keeps its shard of it (torch's set_model_state_dict)."""
    model = run.accelerator.unwrap_model(run.model)
    if run.accelerator.distributed_type != DistributedType.FSDP:
        load_weights(model, run.run_dir)
        return
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = {}
    if run.accelerator.is_main_process:
        full = load_file(run.run_dir / "model.safetensors")
        aliases = {}  # tied weights are one parameter under several names; the file holds one of them
        for name, param in model.state_dict(keep_vars=True).items():
            aliases.setdefault(id(param), []).append(name)
        for names in aliases.values():
            saved = [n for n in names if n in full]
            full.update({n: full[saved[0]] for n in names if saved and n not in full})
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def save_checkpoint(run: Run) -> None:
    """The whole state (weights, optimizer, counters, moving average, every RNG) for `trainer.resume=true`, written
    beside the previous one; `checkpoints/last` then points at it (an atomic rename), so a process killed at any
    moment leaves a complete checkpoint behind."""
    state, accelerator = run.state, run.accelerator
    folder = run.last_checkpoint.parent
    if run.saved_step == state.step:
        return  # this step's state is saved already (the same on every rank: no file system race)
    target = folder / f"step_{state.step:08d}"
    run.saved_step, state.saved_at = state.step, state.elapsed
    accelerator.save_state(str(target))
    if accelerator.is_main_process:
        link = folder / "last.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(target.name)
        if run.last_checkpoint.is_dir() and not run.last_checkpoint.is_symlink():  # a run saved before this layout
            shutil.rmtree(run.last_checkpoint)
        os.replace(link, run.last_checkpoint)
        for old in folder.glob("step_*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def checkpoint_due(run: Run) -> bool:
    """A checkpoint between validations: every `save_every` steps, or when `save_every_minutes` have passed."""
    t, state = run.t, run.state
    by_steps = t.save_every and state.step % t.save_every == 0
    by_time = t.save_every_minutes and state.elapsed - state.saved_at >= 60 * t.save_every_minutes
    return bool(by_steps or by_time)  # `elapsed` is rank 0's on every rank, so all ranks agree


def out_of_budget(run: Run) -> bool:
    """The step count is reached, or the time budget minus what the final validation will take (what the last one
    took, at most half the budget)."""
    budget, state = run.t.max_minutes * 60, run.state
    return state.step >= run.total_steps or bool(budget and state.elapsed >= budget - min(state.val_seconds,
                                                                                           budget / 2))


def fit(task: Task, t: TrainerConfig, accelerator: Accelerator, run_dir: Path) -> dict:
    """Train `task`'s model, keep the best validation checkpoint in `run_dir`, score it on test; return a summary."""
    run = setup(task, t, accelerator, run_dir)
    log.info("training %s: %s parameters, %d steps of %d x %d x %d examples%s", task.cfg.task.name,
             f"{run.params:,}", run.total_steps, t.batch_size, t.grad_accum, accelerator.num_processes,
             f", at most {t.max_minutes:g} min" if t.max_minutes else "")
    bar = tqdm(total=run.total_steps, initial=run.state.step, disable=not accelerator.is_local_main_process,
               desc=f"train {task.cfg.task.name}", dynamic_ncols=True)
    run.started = run.clock() - run.state.elapsed
    run.model.train()
    while not run.stop:
        for batch in epoch_batches(run):
            run.running_loss += train_step(run, batch)
            if not accelerator.sync_gradients:
                continue
            count_step(run, bar)
            if run.val_loader is not None and run.state.step % run.eval_every == 0:
                validate(run)
            elif checkpoint_due(run):
                save_checkpoint(run)
            run.stop = run.stop or out_of_budget(run)
            if run.stop:
                break
        else:
            run.state.epoch += 1
            run.state.batch_in_epoch = 0
    bar.close()
    if run.val_loader is None:  # nothing to select on: the last weights are the model
        save_best(run)
        save_checkpoint(run)
    elif run.last_eval_step != run.state.step:
        validate(run)
        run.state.elapsed = run.clock() - run.started
    return finish(run)


def sam_gradients(params: list[torch.Tensor], rho: float, again) -> None:
    """SAM's step (Foret et al. 2021): replace the gradients g by those at the nearby weights w + rho * g / |g|, the
    first-order worst case within radius rho; `again()` zeroes the gradients and reruns forward and backward."""
    params = [p for p in params if p.grad is not None]
    with torch.no_grad():
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        shifts = [p.grad * (rho / (norm + 1e-12)) for p in params]
        torch._foreach_add_(params, shifts)
    again()
    with torch.no_grad():
        torch._foreach_sub_(params, shifts)


def finish(run: Run) -> dict:
    """Reload the best checkpoint on every process and score it on the test split."""
    task, accelerator, model, state = run.task, run.accelerator, run.model, run.state
    accelerator.wait_for_everyone()
    load_best(run)
    test = evaluate(task, model, accelerator.prepare(task.dataloader("test", train=False)), accelerator)
    checksums = gather_object([parameter_checksum(model)])  # one per process: they must all agree
    return {"metrics": test, "params": run.params, "steps": state.step, "best_step": state.best_step,
            "best": state.best, "train_seconds": round(state.elapsed, 1),
            "samples_per_second": round(state.samples / max(state.step_seconds, 1e-9), 2),
            "param_checksums": checksums}


def parameter_checksum(model) -> str:
    """Of the whole weights, also under FSDP, where each process holds a shard (`full_tensor` gathers it)."""
    digest = hashlib.sha256()
    for p in model.parameters():
        p = p.full_tensor() if hasattr(p, "full_tensor") else p
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
