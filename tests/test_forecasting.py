"""Forecasting: the ETTh1 protocol (windows, scaler), RevIN, a model that learns, run.py end to end on a CSV with
ETTh1's columns made here, and the run folder as a transformers model (Auto class, trust_remote_code)."""

import json
import logging
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file
from transformers import AutoModelForTimeSeriesPrediction

import core  # noqa: F401  (registers the suite's models with transformers' Auto classes)
from core.forecaster import RevIN, SuiteForForecasting
from core.modeling import SuiteConfig
from core.series import Windows
from core.task import UserError
from tasks.forecasting import Task
from tests.conftest import ROOT, run_suite, run_without_suite

COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
TINY = ["task=forecasting", "model.d_model=32", "model.d_ff=64", "task.lookback=48", "task.horizon=24",
        "data.borders=null", "trainer.batch_size=32", "trainer.lr=3e-3", "trainer.warmup_steps=5",
        "trainer.max_minutes=0", "trainer.patience=0", "trainer.log_every=5"]


# Models this small run fastest on one thread, and a busy machine's spare threads slow them 10-50x (OpenMP
# spin-waits), so the training here uses one.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def write_ett(path, rows: int, seed: int = 0):
    """An hourly CSV with ETTh1's columns: daily and weekly cycles, a slow drift and noise per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    phase = rng.uniform(0, 2 * np.pi, (2, len(COLUMNS)))
    values = (np.sin(2 * np.pi * t / 24 + phase[0]) + 0.5 * np.sin(2 * np.pi * t / 168 + phase[1])
              + 0.001 * t * rng.normal(size=len(COLUMNS)) + 0.1 * rng.normal(size=(rows, len(COLUMNS))))
    frame = pd.DataFrame(values * 5 + 20, columns=COLUMNS)
    frame.insert(0, "date", pd.date_range("2016-07-01", periods=rows, freq="h").strftime("%Y-%m-%d %H:%M:%S"))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return frame


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["task=forecasting", *overrides])


def prepared(csv, tmp_path, *overrides: str) -> Task:
    task = Task(config(f"data.file={csv}", *overrides))
    task.prepare(tmp_path, is_main=True)
    return task


@pytest.fixture(scope="module")
def full_csv(tmp_path_factory):
    """ETTh1's length (17,420 rows), so the standard borders apply."""
    path = tmp_path_factory.mktemp("ett") / "ETTh1.csv"
    write_ett(path, 17420)
    return path


@pytest.mark.parametrize("horizon, lookback", [(96, 336), (192, 336), (336, 336), (720, 336), (96, 96)])
def test_window_counts_follow_the_protocol(full_csv, tmp_path, horizon, lookback):
    task = prepared(full_csv, tmp_path, f"task.horizon={horizon}", f"task.lookback={lookback}")
    assert len(task.data["train"]) == 8640 - lookback - horizon + 1
    assert len(task.data["validation"]) == len(task.data["test"]) == 2881 - horizon  # 2785 at H=96
    first = task.data["test"][0]
    assert first["past_values"].shape == (lookback, 7) and first["future_values"].shape == (horizon, 7)
    # evaluation keeps the last incomplete batch: every test window is scored
    assert sum(len(b["past_values"]) for b in task.dataloader("test", train=False)) == 2881 - horizon


def test_scaler_sees_only_train_rows(full_csv, tmp_path):
    task = prepared(full_csv, tmp_path)
    train = pd.read_csv(full_csv)[COLUMNS].to_numpy()[:8640]
    np.testing.assert_allclose(task.scaler.mean, train.mean(0))
    np.testing.assert_allclose(task.scaler.std, train.std(0))  # ddof=0, as StandardScaler
    changed = pd.read_csv(full_csv)
    changed.loc[8640:, COLUMNS] *= 1000  # the future may be anything: the scaler must not move
    changed.to_csv(tmp_path / "changed.csv", index=False)
    other = prepared(tmp_path / "changed.csv", tmp_path)
    np.testing.assert_allclose(other.scaler.mean, task.scaler.mean)
    np.testing.assert_allclose(other.scaler.std, task.scaler.std)


def test_revin_is_exactly_inverted():
    torch.manual_seed(0)
    revin = RevIN(7)
    with torch.no_grad():
        revin.weight.uniform_(0.5, 2.0)
        revin.bias.normal_()
    x = torch.randn(4, 96, 7) * (torch.rand(7) * 10 + 1) + torch.randn(7) * 50
    y, stats = revin.normalize(x)
    torch.testing.assert_close(revin.denormalize(y, stats), x, rtol=1e-5, atol=1e-4)
    plain, _ = RevIN(7, affine=False).normalize(x)
    torch.testing.assert_close(plain.mean(1), torch.zeros(4, 7), rtol=0, atol=1e-3)
    torch.testing.assert_close(plain.std(1, unbiased=False), torch.ones(4, 7), rtol=0, atol=1e-3)


@pytest.mark.parametrize("architecture", ["patch", "encdec"])
def test_tiny_model_fits_a_sine_wave(architecture, one_thread):
    torch.manual_seed(0)
    L, H = 64, 16
    t = torch.arange(2000).float()[:, None]
    series = torch.sin(2 * torch.pi * t / torch.tensor([24.0, 37.0])) * torch.tensor([1.0, 3.0])  # (rows, 2)
    windows = Windows(series.numpy(), L, H)
    config = SuiteConfig(d_model=32, n_heads=2, d_ff=64, n_layers=1, n_decoder_layers=1, dropout=0.0, stem="none",
                         architecture=architecture, lookback=L, horizon=H, patch_len=16, patch_stride=8, label_len=16,
                         revin=True, series_channels=["a", "b"])
    model = SuiteForForecasting(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(windows, batch_size=64, shuffle=True)
    for _ in range(5):  # 30 batches an epoch
        for batch in loader:
            loss = model(**batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    batch = next(iter(torch.utils.data.DataLoader(windows, batch_size=512)))
    with torch.no_grad():
        mse = model(**batch)["loss"].item()
    assert mse < 0.01 * series.var(0).mean().item(), mse  # the signal's variance is 5; repeating the last value ~5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run through run.py on a 1,500-row CSV with ETTh1's columns (70/10/20 split)."""
    root = tmp_path_factory.mktemp("data")
    frame = write_ett(root / "etth1" / "ETTh1.csv", 1500)
    workdir = tmp_path_factory.mktemp("work")
    out = run_suite(*TINY, "trainer.max_steps=60", "trainer.eval_every=30", cwd=workdir,
                    env={"SUITE_DATA": str(root), **ONE_THREAD})
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (workdir / "outputs" / "runs").glob("*")
    return workdir, run_dir, frame, out


def test_training_reports_mse_mae_and_the_baseline(trained):
    workdir, run_dir, frame, out = trained
    assert "test mse" in out.stdout
    config = json.loads((run_dir / "config.json").read_text())  # the scaler travels with the model: train rows only
    train = frame[COLUMNS].to_numpy()[: int(1500 * 0.7)]
    assert config["series_channels"] == config["target_channels"] == COLUMNS
    np.testing.assert_allclose(config["series_mean"], train.mean(0))
    np.testing.assert_allclose(config["series_std"], train.std(0))
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved["metrics"]) == {"mse", "mae", "baseline_mse", "baseline_mae"}
    assert saved["metrics"]["mse"] < 0.5 * saved["metrics"]["baseline_mse"], saved["metrics"]
    assert saved["dataset"] == "etth1 H24 L48 patch" and saved["headline"] == "mse"


def test_predict_writes_a_dated_csv_and_a_plot(trained, tmp_path):
    workdir, run_dir, frame, _ = trained
    recent = frame.iloc[-60:].copy()
    recent.iloc[10, 3] = np.nan  # an empty cell: filled forward and counted
    recent.to_csv(tmp_path / "recent.csv", index=False)
    dest = tmp_path / "out" / "forecast.csv"
    out = run_suite("task=forecasting", "mode=predict", f"run_dir={run_dir}", f"csv={tmp_path / 'recent.csv'}",
                    f"forecast_out={dest}", cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "filled 1 missing values" in out.stdout + out.stderr and str(dest) in out.stdout
    forecast = pd.read_csv(dest, parse_dates=["date"])
    assert list(forecast.columns) == ["date", *COLUMNS] and len(forecast) == 24
    last = pd.Timestamp(frame["date"].iloc[-1])
    assert list(forecast["date"]) == list(pd.date_range(last, periods=25, freq="h")[1:])
    assert forecast[COLUMNS].notna().all().all()
    assert dest.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_short_csv_is_one_clear_line(tmp_path):
    write_ett(tmp_path / "etth1" / "ETTh1.csv", 50)
    out = run_suite(*TINY, cwd=tmp_path, env={"SUITE_DATA": str(tmp_path)})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "has 50 rows" in out.stderr and "L + H = 48 + 24 = 72" in out.stderr
    assert not (tmp_path / "outputs" / "runs").exists() or not list((tmp_path / "outputs" / "runs").iterdir())


def test_missing_column_is_named(tmp_path):
    write_ett(tmp_path / "ett.csv", 400).drop(columns="OT").to_csv(tmp_path / "no_ot.csv", index=False)
    with pytest.raises(UserError, match=r"\['OT'\].*data.inputs"):
        prepared(tmp_path / "no_ot.csv", tmp_path, f"data.inputs=[{','.join(COLUMNS)}]")
    with pytest.raises(UserError, match=r"\['when'\].*data.date_column"):
        prepared(tmp_path / "ett.csv", tmp_path, "data.date_column=when")


def test_missing_values_are_filled_forward_and_counted(tmp_path, caplog):
    frame = write_ett(tmp_path / "ett.csv", 400)
    frame.loc[5, "OT"] = np.nan
    frame.loc[[7, 8], "HULL"] = np.nan
    frame.to_csv(tmp_path / "gaps.csv", index=False)
    with caplog.at_level(logging.WARNING):
        task = prepared(tmp_path / "gaps.csv", tmp_path, "data.borders=null", "task.lookback=32", "task.horizon=8")
    assert "filled 3 missing values forward (HULL: 2, OT: 1)" in caplog.text
    series = task.data["train"].series.numpy() * task.scaler.std + task.scaler.mean
    assert not np.isnan(series).any()
    np.testing.assert_allclose(series[5, 6], frame.loc[4, "OT"], rtol=1e-5)  # the value before the gap
    np.testing.assert_allclose(series[8, 1], frame.loc[6, "HULL"], rtol=1e-5)


def test_univariate_target_and_backtest(tmp_path):
    """data.targets=[OT]: all channels in, OT out; backtest=true scores the CSV's last H rows and plots the truth."""
    write_ett(tmp_path / "ett.csv", 400)
    task = prepared(tmp_path / "ett.csv", tmp_path, "data.borders=null", "task.lookback=32", "task.horizon=8",
                    "model.d_model=16", "model.d_ff=32", "data.targets=[OT]", f"csv={tmp_path / 'ett.csv'}",
                    "backtest=true", f"forecast_out={tmp_path / 'bt.csv'}")
    model = task.build_model().eval()
    assert model(past_values=torch.zeros(2, 32, 7))["prediction_outputs"].shape == (2, 8, 1)
    lines = task.predict(model, task.read_inputs())
    assert "backtest on the last 8 rows" in lines[1]
    forecast = pd.read_csv(tmp_path / "bt.csv")
    assert list(forecast.columns) == ["date", "OT"] and forecast["date"].iloc[-1] == "2016-07-17 15:00:00"
    assert (tmp_path / "bt.png").is_file()


@pytest.mark.parametrize("override, message", [
    ("task.architecture=lstm", "task.architecture='lstm': choose one of patch, encdec"),
    ("task.lookback=8", "task.lookback=8 must be at least task.patch_len=16"),
    ("task.horizon=0", "task.horizon=0: give a positive number of steps"),
    ("task.head_dropout=1.5", "task.head_dropout=1.5 in [0, 1)"),
    ("task.lookback=many", "bad value for task.lookback"),
    ("model.max_len=32", "the patch model reads 42 tokens, more than model.max_len=32"),
])
def test_bad_settings_are_named_before_any_data_is_read(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        Task(config("data.file=/nowhere/ETTh1.csv", override))  # the CSV is never looked for


def last_window(config: SuiteConfig, csv) -> torch.Tensor:
    """The CSV's last L rows as the model reads them: scaled by the scaler in the model's own config."""
    rows = pd.read_csv(csv)[config.series_channels].to_numpy()[-config.lookback :]
    scaled = (rows - np.asarray(config.series_mean)) / np.asarray(config.series_std)
    return torch.tensor(scaled, dtype=torch.float32)[None]  # (1, L, C)


def test_a_run_folder_is_a_transformers_model(trained, tmp_path):
    """AutoModelForTimeSeriesPrediction opens a run folder once `core` is imported; with the scaler in its config
    it gives mode=predict's forecast, and save_pretrained round-trips to identical outputs."""
    workdir, run_dir, frame, _ = trained
    model = AutoModelForTimeSeriesPrediction.from_pretrained(run_dir).eval()
    assert isinstance(model, SuiteForForecasting) and model.config.architecture == "patch"
    frame.iloc[-60:].to_csv(tmp_path / "recent.csv", index=False)
    past = last_window(model.config, tmp_path / "recent.csv")
    with torch.no_grad():
        pred = model(past_values=past).prediction_outputs[0].double().numpy()  # (H, targets), scaled
    model.save_pretrained(tmp_path / "copy")
    again = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path / "copy").eval()
    with torch.no_grad():
        assert np.array_equal(again(past_values=past).prediction_outputs[0].double().numpy(), pred)

    out = run_suite("task=forecasting", "mode=predict", f"run_dir={run_dir}", f"csv={tmp_path / 'recent.csv'}",
                    f"forecast_out={tmp_path / 'forecast.csv'}", cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    forecast = pd.read_csv(tmp_path / "forecast.csv")[COLUMNS].to_numpy()
    mean, std = np.asarray(model.config.series_mean), np.asarray(model.config.series_std)
    np.testing.assert_allclose(forecast, pred * std + mean, rtol=1e-9)


def test_a_run_folder_loads_where_the_suite_is_not_installed(trained, tmp_path):
    _, run_dir, frame, _ = trained
    folder = tmp_path / "shared_model"
    shutil.copytree(run_dir, folder, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    frame.iloc[-48:].to_csv(tmp_path / "recent.csv", index=False)
    model = AutoModelForTimeSeriesPrediction.from_pretrained(run_dir).eval()
    with torch.no_grad():
        expected = model(past_values=last_window(model.config, tmp_path / "recent.csv")).prediction_outputs
    out = run_without_suite(f"""
import json, numpy as np, pandas as pd, torch
from transformers import AutoModelForTimeSeriesPrediction
model = AutoModelForTimeSeriesPrediction.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
c = model.config  # the channels and the training rows' scaler travel in config.json
rows = pd.read_csv({str(tmp_path / "recent.csv")!r})[c.series_channels].to_numpy()[-c.lookback:]
past = torch.tensor((rows - np.asarray(c.series_mean)) / np.asarray(c.series_std), dtype=torch.float32)[None]
with torch.no_grad():
    print(type(model).__module__, json.dumps(model(past_values=past).prediction_outputs.tolist()))
""", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    module, prediction = out.stdout.strip().split(" ", 1)
    assert module.startswith("transformers_modules.")  # the folder's own copy of the modeling code
    torch.testing.assert_close(torch.tensor(json.loads(prediction)), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("overrides", [["task.architecture=encdec", "data.targets=[OT]"],
                                       ["task.revin=false", "data.targets=[HULL,OT]"]])
def test_saved_models_reload_to_identical_outputs(tmp_path, overrides):
    write_ett(tmp_path / "ett.csv", 400)
    task = prepared(tmp_path / "ett.csv", tmp_path, "data.borders=null", "task.lookback=32", "task.horizon=8",
                    "model.d_model=16", "model.d_ff=32", *overrides)
    torch.manual_seed(0)
    model = task.build_model().eval()
    with torch.no_grad():  # no parameter left at a value its initialisation would give again
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "run")
    again = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path / "run").eval()
    batch = next(iter(task.dataloader("test", train=False)))
    with torch.no_grad():
        a, b = model(**batch), again(**batch)
    assert a.prediction_outputs.shape == (len(batch["past_values"]), 8, len(task.targets))
    assert torch.equal(a.prediction_outputs, b.prediction_outputs) and torch.equal(a.loss, b.loss)


def test_revin_missing_from_a_checkpoint_starts_as_the_identity(tmp_path):
    """transformers builds a loaded model on the meta device and initialises, module by module, only what the
    checkpoint lacks: RevIN's own reset_parameters must give weight 1 and bias 0, not uninitialised memory."""
    config = SuiteConfig(d_model=16, n_heads=2, d_ff=32, n_layers=1, stem="none", lookback=32, horizon=8,
                         series_channels=["a", "b", "c"])
    SuiteForForecasting(config).save_pretrained(tmp_path)
    weights = {k: v for k, v in load_file(tmp_path / "model.safetensors").items() if not k.startswith("revin.")}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path)
    assert torch.equal(model.revin.weight, torch.ones(3)) and torch.equal(model.revin.bias, torch.zeros(3))
