"""The one training loop every task uses, on Hugging Face Accelerate (one CPU or GPU, or several processes)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, gather_object
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from core.task import Task, UserError, count_parameters, load_weights, save_weights, to_dataclass

log = logging.getLogger(__name__)


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
    warmup_steps: int = 200  # linear warm-up from 0 to lr
    warmup_max_fraction: float = 0.25  # ...ended by this fraction of the run at the latest (steps or budget), so a
    #                                     short budget (the suite's max_minutes=4) does not spend itself warming up
    schedule: str = "cosine"  # decay after warm-up over the run's progress: cosine, linear or constant
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_grad: float = 1.0  # max global gradient norm; 0 = no clipping
    mixed_precision: str = "auto"  # bf16, fp16, no, or auto: bf16 where the device computes it natively
    eval_every: int = 0  # optimizer steps between validations; 0 = once per epoch
    patience: int = 0  # stop after this many validations without improvement; 0 = never
    sam_rho: float = 0.0  # sharpness-aware minimisation (Foret et al. 2021): take each step's gradient at the worst
    #                       weights within this L2 radius; 0 = off. Costs a second forward + backward pass per step
    ema_decay: float = 0.0  # validate, keep and test an exponential moving average of the weights; 0 = off
    log_every: int = 20  # steps between progress-bar/TensorBoard updates
    seed: int = 0  # seeds Python, NumPy and torch on every process
    resume: bool = False  # continue from <run_dir>/checkpoints/last
    num_workers: int = 0  # DataLoader worker processes

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"trainer.schedule={self.schedule!r}: choose one of {sorted(SCHEDULES)}")
        if not 0 <= self.warmup_max_fraction <= 1:
            raise ValueError(f"trainer.warmup_max_fraction={self.warmup_max_fraction}: "
                             "give a fraction of the run, 0 to 1 (0 = no cap)")
        if self.sam_rho < 0:
            raise ValueError(f"trainer.sam_rho={self.sam_rho}: give a radius >= 0 (0 = off)")
        if self.sam_rho and self.grad_accum > 1:
            raise ValueError(f"trainer.sam_rho={self.sam_rho} with trainer.grad_accum={self.grad_accum}: SAM takes "
                             "one batch per step; set grad_accum=1")
        if self.clock not in CLOCKS:
            raise ValueError(f"trainer.clock={self.clock!r}: choose one of {sorted(CLOCKS)}")
        if self.mixed_precision not in ("auto", "bf16", "fp16", "no"):
            raise ValueError(f"trainer.mixed_precision={self.mixed_precision!r}: choose auto, bf16, fp16 or no")


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
SCHEDULES = {
    "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * min(p, 1.0))),
    "linear": lambda p: max(0.0, 1 - p),
    "constant": lambda p: 1.0,
}


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 matmuls run ~4x faster than float32 (README)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(choice: str, use_cpu: bool) -> str:
    """The `auto` default: bf16 where the hardware has it, otherwise float32. fp16 on a CPU is refused."""
    on_gpu = torch.cuda.is_available() and not use_cpu
    if choice == "auto":
        if on_gpu:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "no"
    if choice == "fp16" and not on_gpu:
        raise UserError("trainer.mixed_precision=fp16 has no fast path on a CPU: use bf16 or no")
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
        self.best: float | None = None
        self.best_step = self.bad_evals = 0

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


class NonFiniteLoss(UserError):
    pass


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: biases, norms and other vectors keep their scale (as in nanoGPT / BERT)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


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


def fit(task: Task, t: TrainerConfig, accelerator: Accelerator, run_dir: Path) -> dict:
    """Train `task`'s model, keep the best validation checkpoint in `run_dir`, score it on test; return a summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    model = task.build_model()
    params = count_parameters(model)
    if getattr(model, "config", None) is not None and isinstance(model.config.suite, dict):
        model.config.suite["params"] = params  # config.json says what the weights are without the code
    fused = accelerator.device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=tuple(t.betas), fused=fused)
    train_loader = task.dataloader("train", train=True)
    val_loader = task.dataloader("validation", train=False)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    val_loader = accelerator.prepare(val_loader) if val_loader is not None else None
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    ema = None
    if t.ema_decay:  # timm's EMA, with warm-up so that early averages are not dominated by the random init
        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=t.ema_decay, use_warmup=True)
        accelerator.register_for_checkpointing(ema)
    eval_model = ema.module if ema else model  # what is validated, kept and tested
    best_model = accelerator.unwrap_model(eval_model)
    last_ckpt = run_dir / "checkpoints" / "last"
    if t.resume:
        if not last_ckpt.is_dir():
            raise UserError(f"trainer.resume=true but {last_ckpt} does not exist; start the run without resume")
        accelerator.load_state(str(last_ckpt))
        log.info("resumed from %s at step %d", last_ckpt, state.step)

    steps_per_epoch = max(1, len(train_loader) // t.grad_accum)
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    budget = t.max_minutes * 60
    eval_every = t.eval_every or steps_per_epoch
    log.info("training %s: %s parameters, %d steps of %d x %d x %d examples%s", task.cfg.task.name, f"{params:,}",
             total_steps, t.batch_size, t.grad_accum, accelerator.num_processes,
             f", at most {t.max_minutes:g} min" if budget else "")

    clock = CLOCKS[t.clock]

    def train_budget() -> float:
        """Seconds of the budget for training steps: the final validation must fit in it too, so keep back what the
        last one took (at most half the budget)."""
        return budget - min(state.val_seconds, budget / 2)

    def progress() -> float:
        return max(state.step / total_steps, state.elapsed / budget if budget else 0.0)

    def validate() -> None:
        tick = clock()
        metrics = evaluate(task, eval_model, val_loader, accelerator)
        value = metrics[task.metric]
        record = {"step": state.step, "epoch": state.epoch, "elapsed": round(state.elapsed, 1),
                  **{f"val/{k}": v for k, v in metrics.items()}}
        accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=state.step)
        if improved(task, value, state.best):
            state.best, state.best_step, state.bad_evals = value, state.step, 0
            if accelerator.is_main_process:
                save_weights(best_model, run_dir)
        else:
            state.bad_evals += 1
        if accelerator.is_main_process:
            with open(run_dir / "history.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        tqdm.write(f"step {state.step}: val {task.metric} {value:.4f} (best {state.best:.4f} at {state.best_step})")
        state.val_seconds = clock() - tick
        if accelerator.num_processes > 1:  # every rank must reckon with the same budget
            state.val_seconds = broadcast(torch.tensor([state.val_seconds], device=accelerator.device)).item()
        accelerator.save_state(str(last_ckpt))

    pbar = tqdm(total=total_steps, initial=state.step, disable=not accelerator.is_local_main_process,
                desc=f"train {task.cfg.task.name}", dynamic_ncols=True)
    started = clock() - state.elapsed
    running_loss, last_eval_step, stop = 0.0, state.step, state.step >= total_steps
    model.train()
    while not stop:
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(state.epoch)  # same shuffle order when resumed
        loader = accelerator.skip_first_batches(train_loader, state.batch_in_epoch) if state.batch_in_epoch \
            else train_loader
        for batch in loader:
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
                        raise NonFiniteLoss(
                            f"loss became non-finite at step {state.step} (loss {loss.item():.4g}); the best "
                            f"checkpoint so far is kept in {run_dir}; lower trainer.lr or try "
                            f"trainer.mixed_precision=no")
                    lr = learning_rate(t, state.step, progress())
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None and accelerator.sync_gradients:
                    ema.update(accelerator.unwrap_model(model), step=state.step + 1)
            state.batch_in_epoch += 1
            state.samples += len(next(iter(batch.values()))) * accelerator.num_processes
            running_loss += loss.item() / t.grad_accum
            state.step_seconds += time.perf_counter() - tick
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            state.elapsed = clock() - started
            if accelerator.num_processes > 1:  # one clock for all ranks, or they would stop at different steps
                state.elapsed = broadcast(torch.tensor([state.elapsed], device=accelerator.device)).item()
            pbar.update(1)
            if state.step % t.log_every == 0:
                avg = running_loss / t.log_every
                running_loss = 0.0
                pbar.set_postfix(loss=f"{avg:.4f}", lr=f"{lr:.2e}",
                                 samples_s=f"{state.samples / max(state.step_seconds, 1e-9):.1f}")
                accelerator.log({"train/loss": avg, "train/lr": lr}, step=state.step)
            if val_loader is not None and state.step % eval_every == 0:
                validate()
                last_eval_step = state.step
                if t.patience and state.bad_evals >= t.patience:
                    log.info("no improvement in %d validations: stopping early", t.patience)
                    stop = True
            if state.step >= total_steps or (budget and state.elapsed >= train_budget()):
                stop = True
            if stop:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
    pbar.close()
    if val_loader is None:  # nothing to select on: the last weights are the model
        accelerator.save_state(str(last_ckpt))
        if accelerator.is_main_process:
            save_weights(best_model, run_dir)
    elif last_eval_step != state.step:
        validate()
        state.elapsed = clock() - started
    return finish(task, model, accelerator, run_dir, state, params)


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


def finish(task: Task, model, accelerator: Accelerator, run_dir: Path, state: TrainState, params: int) -> dict:
    """Reload the best checkpoint on every process and score it on the test split."""
    accelerator.wait_for_everyone()
    load_weights(accelerator.unwrap_model(model), run_dir)
    test = evaluate(task, model, accelerator.prepare(task.dataloader("test", train=False)), accelerator)
    checksums = gather_object([parameter_checksum(model)])  # one per process: they must all agree
    return {"metrics": test, "params": params, "steps": state.step, "best_step": state.best_step,
            "train_seconds": round(state.elapsed, 1),
            "samples_per_second": round(state.samples / max(state.step_seconds, 1e-9), 2),
            "param_checksums": checksums}


def parameter_checksum(model) -> str:
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
