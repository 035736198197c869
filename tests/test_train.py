"""The training loop, saved models and the leaderboard, in process (no subprocess start-up)."""

import json
import multiprocessing as mp
import time

import pytest
import torch
from accelerate import Accelerator
from hydra import compose, initialize_config_dir
from torch import nn
from torch.utils.data import DataLoader

from core import leaderboard, train
from core.task import Task, UserError, available_tasks, load_task, load_weights, model_config, save_weights
from core.train import NonFiniteLoss, TrainerConfig, cpu_has_native_bf16, fit, learning_rate, resolve_precision
from tests.conftest import ROOT


def compose_cfg(*overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_saved_model_reloads_to_identical_outputs(data_root, tmp_path):
    cfg = compose_cfg("task=sentiment", "model=tiny", "task.vocab_size=200", f"data.root={data_root}")
    task = load_task(cfg)
    task.prepare(tmp_path, is_main=True)
    model = task.build_model().eval()
    save_weights(model, tmp_path)

    again = load_task(cfg)
    again.load_assets(tmp_path)  # the tokenizer and labels from disk, as mode=predict does
    reloaded = again.load_model(tmp_path)
    texts = ["a great film", "the plot was dull and boring , really"]
    enc_a = task.tokenizer(texts, padding=True, return_tensors="pt")
    enc_b = again.tokenizer(texts, padding=True, return_tensors="pt")
    assert torch.equal(enc_a["input_ids"], enc_b["input_ids"])
    with torch.no_grad():
        a = model(input_ids=enc_a["input_ids"], attention_mask=enc_a["attention_mask"])["logits"]
        b = reloaded(input_ids=enc_b["input_ids"], attention_mask=enc_b["attention_mask"])["logits"]
    assert torch.equal(a, b)
    assert again.labels == ["negative", "positive"]


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.poison_after = None  # step after which the loss turns NaN
        self.calls = 0

    def forward(self, x, y):
        self.calls += self.training
        logits = self.linear(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        if self.poison_after is not None and self.calls > self.poison_after:
            loss = loss * float("nan")
        return {"loss": loss, "logits": logits}


class ToyTask(Task):
    """A linearly separable problem: enough to drive the loop without any data files."""

    def __init__(self, poison_after=None):
        self.cfg = compose_cfg("task=sentiment", "model=tiny")
        self.model_cfg = model_config(self.cfg)
        self.poison_after = poison_after
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def build_model(self):
        model = Toy()
        model.poison_after = self.poison_after
        return model

    def dataloader(self, split, train):
        rows = [{"x": x, "y": y} for x, y in zip(self.x, self.y)]
        return DataLoader(rows, batch_size=8, shuffle=train)

    def eval_step(self, model, batch):
        return list(zip(model(**batch)["logits"].argmax(-1).tolist(), batch["y"].tolist()))

    def compute_metrics(self, records):
        return {"accuracy": sum(p == y for p, y in records) / len(records)}

    def dataset_name(self):
        return "toy"


def test_loop_learns_and_keeps_the_best_checkpoint(tmp_path):
    t = TrainerConfig(lr=0.1, max_steps=40, warmup_steps=1, eval_every=8, mixed_precision="no")
    result = fit(ToyTask(), t, Accelerator(cpu=True), tmp_path)
    assert result["metrics"]["accuracy"] >= 0.9 and result["steps"] == 40
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    best = max(history, key=lambda h: h["val/accuracy"])
    assert result["best_step"] == best["step"]
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "checkpoints" / "last").is_dir()


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    t = TrainerConfig(lr=0.1, max_steps=40, warmup_steps=1, eval_every=4, mixed_precision="no")
    with pytest.raises(NonFiniteLoss, match="non-finite at step 10"):
        fit(ToyTask(poison_after=10), t, Accelerator(cpu=True), tmp_path)
    model = load_weights(Toy(), tmp_path)  # the checkpoint of step 8 is intact
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_precision_default_follows_the_hardware():
    assert resolve_precision("auto", use_cpu=True) == ("bf16" if cpu_has_native_bf16() else "no")
    assert resolve_precision("no", use_cpu=True) == "no"
    with pytest.raises(UserError, match="fp16"):
        resolve_precision("fp16", use_cpu=True)


def _record(path, i):
    leaderboard.record(path, {"run_id": f"run-{i}", "task": "sentiment", "dataset": "sst2", "model": "tiny",
                              "metrics": {"accuracy": i / 10}, "params": 1, "train_seconds": 1.0,
                              "samples_per_second": 1.0, "device": "cpu", "seed": i, "headline": "accuracy",
                              "created": "2026-01-01 00:00:00", "run_dir": "x", "commit": None, "config": {}})


def test_leaderboard_takes_concurrent_writers(tmp_path):
    path = tmp_path / "board.db"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_record, args=(path, i)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)  # each child imports torch and transformers: slow on a busy machine
    assert all(p.exitcode == 0 for p in procs)
    runs = leaderboard.rows(path)
    assert sorted(r["run_id"] for r in runs) == [f"run-{i}" for i in range(6)]
    assert json.loads(leaderboard.render(runs, "json", "runs"))[3]["metrics"] == {"accuracy": 0.3}
    md = leaderboard.render(runs, "markdown", "runs").splitlines()
    assert len(md) == 2 + 6 and md[0].startswith("| run_id")


def test_hub_fallback_offline_names_both_fixes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_cfg("task=sentiment", "data.root=null")
    with pytest.raises(UserError) as err:
        load_task(cfg).prepare(ROOT, is_main=True)
    assert "data.root" in str(err.value) and "SetFit/sst2" in str(err.value) and "\n" not in str(err.value)




def test_warm_up_ends_by_steps_or_by_a_fraction_of_a_short_run():
    t = TrainerConfig(lr=1.0, warmup_steps=1000, warmup_max_fraction=0.25, schedule="constant")
    assert learning_rate(t, 99, progress=0.01) == pytest.approx(0.1)  # a long run: the step count leads
    assert learning_rate(t, 99, progress=0.20) == pytest.approx(0.8)  # a short budget: the fraction leads
    assert learning_rate(t, 299, progress=0.25) == 1.0 and learning_rate(t, 999, progress=0.05) == 1.0
    cosine = TrainerConfig(lr=1.0, warmup_steps=10, schedule="cosine")
    assert learning_rate(cosine, 500, progress=0.5) == pytest.approx(0.5)
    assert learning_rate(cosine, 999, progress=1.0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="warmup_max_fraction"):
        TrainerConfig(warmup_max_fraction=1.5)


def test_ema_weights_are_the_ones_kept(tmp_path):
    """Two runs with the same seed and data differ only by the EMA: the kept weights must differ too."""
    from accelerate.utils import set_seed

    kept = {}
    for decay in (0.0, 0.9):
        set_seed(0)
        t = TrainerConfig(lr=0.1, max_steps=24, warmup_steps=1, eval_every=8, mixed_precision="no", ema_decay=decay)
        result = fit(ToyTask(), t, Accelerator(cpu=True), tmp_path / str(decay))
        assert result["metrics"]["accuracy"] >= 0.9
        kept[decay] = load_weights(Toy(), tmp_path / str(decay)).linear.weight
    assert not torch.equal(kept[0.0], kept[0.9])


class SleepyToy(Toy):
    """Waits 50 ms per training step without using the CPU, as a job does on a machine other jobs keep busy."""

    def forward(self, x, y):
        if self.training:
            time.sleep(0.05)
        return super().forward(x, y)


class SleepyTask(ToyTask):
    def build_model(self):
        return SleepyToy()


def test_process_clock_budget_counts_only_this_process_cpu_time(tmp_path):
    steps = {}
    for clock in ("wall", "process"):
        t = TrainerConfig(lr=0.1, max_steps=3000, max_minutes=0.01, clock=clock, warmup_steps=1, eval_every=1000,
                          mixed_precision="no")
        steps[clock] = fit(SleepyTask(), t, Accelerator(cpu=True), tmp_path / clock)["steps"]
    assert steps["wall"] <= 12  # 0.6 s of steps that take at least 50 ms
    assert steps["process"] > 2 * steps["wall"]  # the waiting is not charged to the budget


class SlowValidationTask(ToyTask):
    """On a fake clock, a training step takes 10 ms and a validation half a second (8 batches)."""

    def __init__(self):
        super().__init__()
        self.now = 0.0

    def build_model(self):
        task, model = self, super().build_model()
        forward = model.forward

        def timed(x, y):
            task.now += 0.01 * model.training
            return forward(x, y)

        model.forward = timed
        return model

    def eval_step(self, model, batch):
        self.now += 0.5 / 8
        return super().eval_step(model, batch)


def test_time_budget_keeps_room_for_the_final_validation(tmp_path, monkeypatch):
    task = SlowValidationTask()
    monkeypatch.setitem(train.CLOCKS, "wall", lambda: task.now)
    t = TrainerConfig(lr=0.1, max_steps=10**6, max_minutes=0.04, warmup_steps=1, eval_every=100, mixed_precision="no")
    result = fit(task, t, Accelerator(cpu=True), tmp_path)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [100, 140]  # 1 s of steps, a 0.5 s validation, 0.4 s of steps, and...
    assert result["steps"] == 140 and result["train_seconds"] == pytest.approx(2.4)  # ...the last one: 2.4 s in all


def test_sam_takes_the_gradient_at_the_perturbed_weights_and_restores_them():
    """trainer.sam_rho: the step's gradient is the one at w + rho * g / |g|, computed here by hand on a copy."""
    torch.manual_seed(0)
    model, batch = Toy(), {"x": torch.randn(8, 4), "y": torch.randint(0, 2, (8,))}
    weights = [p.detach().clone() for p in model.parameters()]
    model(**batch)["loss"].backward()
    g = [p.grad.clone() for p in model.parameters()]
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    by_hand = Toy()
    with torch.no_grad():
        for q, w, gi in zip(by_hand.parameters(), weights, g):
            q.copy_(w + 0.5 * gi / norm)
    by_hand(**batch)["loss"].backward()

    def again():
        model.zero_grad(set_to_none=True)
        model(**batch)["loss"].backward()

    train.sam_gradients(list(model.parameters()), 0.5, again)
    for p, w, q, gi in zip(model.parameters(), weights, by_hand.parameters(), g):
        torch.testing.assert_close(p.detach(), w)  # the weights are back where they were
        torch.testing.assert_close(p.grad, q.grad)  # ...with the gradient of the perturbed weights
        assert not torch.allclose(p.grad, gi)  # which is not the plain gradient
    with pytest.raises(ValueError, match="grad_accum=1"):
        TrainerConfig(sam_rho=0.05, grad_accum=2)
    with pytest.raises(ValueError, match="radius >= 0"):
        TrainerConfig(sam_rho=-1.0)


class KeptToyTask(ToyTask):
    def build_model(self):
        self.model = Toy()
        return self.model


def test_sam_in_the_loop_runs_two_passes_per_step(tmp_path):
    task = KeptToyTask()
    t = TrainerConfig(lr=0.1, max_steps=16, warmup_steps=1, eval_every=8, mixed_precision="no", sam_rho=0.05)
    result = fit(task, t, Accelerator(cpu=True), tmp_path)
    assert task.model.calls == 2 * 16  # training-mode forward passes
    assert result["metrics"]["accuracy"] >= 0.9


@pytest.mark.parametrize("task", available_tasks())
def test_a_model_name_means_one_network_on_every_task(task):
    """A task's YAML may choose its default variant and set dropout (its recipe), never the network's shape: `model=X`
    is the same width, depth, heads, FFN, positions and norm placement on every task (issue: one meaning per name)."""
    from core import api
    from core.runs import SHAPE

    cfg, choice = api.config(task)
    alone, _ = api.config("sentiment", f"model={choice}")
    assert {f: cfg.model.get(f) for f in SHAPE} == {f: alone.model.get(f) for f in SHAPE}, (task, choice)
    other, _ = api.config(task, "model=small")
    small, _ = api.config("sentiment", "model=small")
    assert {f: other.model.get(f) for f in SHAPE} == {f: small.model.get(f) for f in SHAPE}
