"""Long-horizon time-series forecasting (ETTh1 by default): its data, its metrics and its forecasts.

The standard protocol of Informer / Autoformer / PatchTST (`core.series`): fixed row borders (train [0, 8640),
validation [8640 - L, 11520), test [11520 - L, 14400) on ETTh1), a scaler fitted on the train rows only, every window
of L past and H future steps at stride 1, and MSE / MAE on the scaled data. The model is the shared forecasting head
(`core.forecaster`): RevIN around PatchTST's channel-independent patches (`task.architecture=patch`) or around the
original encoder-decoder over whole time steps (`encdec`, to show what patching buys). The scaler travels in the
model's config.json, so a run folder alone forecasts from a raw CSV.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from core import task as base
from core.attention_plots import attention_strip, last_layer, panels_with_strip, save, shade_by_step
from core.forecaster import ARCHITECTURES, SuiteForForecasting, patch_count
from core.series import Scaler, Windows, continue_dates, plot_forecast, read_series, split_rows
from core.transformer import record_attention

log = logging.getLogger(__name__)


@dataclass
class Config:
    """The `task` group of conf/task/forecasting.yaml."""

    name: str = "forecasting"
    architecture: str = "patch"  # patch (PatchTST: channel-independent patches) | encdec (the Transformer on steps)
    lookback: int = 336  # L, past steps the model sees
    horizon: int = 96  # H, steps forecast
    revin: bool = True  # reversible instance normalisation around either architecture
    patch_len: int = 16  # patch: steps per patch token
    patch_stride: int = 8  # patch: steps between patch starts
    head_dropout: float = 0.0  # patch: dropout on the flattened tokens before the linear head
    label_len: int = 48  # encdec: past steps the decoder reads before the H placeholders

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"task.architecture={self.architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
        for name in ("lookback", "horizon", "patch_len", "patch_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"task.{name}={getattr(self, name)}: give a positive number of steps")
        if self.architecture == "patch" and self.lookback < self.patch_len:
            raise ValueError(f"task.lookback={self.lookback} must be at least task.patch_len={self.patch_len}")
        if self.label_len < 0 or not 0 <= self.head_dropout < 1:
            raise ValueError(f"task.label_len={self.label_len} must be >= 0 and task.head_dropout="
                             f"{self.head_dropout} in [0, 1)")


class Task(base.Task):
    """Forecast H steps from L; metrics `mse` and `mae` on scaled data, and the repeat-last-value `baseline_*`."""

    metric = "mse"
    greater_is_better = False
    head = SuiteForForecasting
    Config = Config
    input_keys = ("csv",)

    def __init__(self, cfg):
        super().__init__(cfg)
        tc = self.config
        decoder = min(tc.label_len, tc.lookback) + tc.horizon  # encdec: the decoder reads label_len + H steps
        tokens = patch_count(tc) if tc.architecture == "patch" else max(tc.lookback, decoder)
        if tokens > self.model_cfg.max_len:
            raise base.UserError(f"the {tc.architecture} model reads {tokens} tokens, more than model.max_len="
                                 f"{self.model_cfg.max_len}; raise model.max_len or shorten task.lookback/horizon")
        self.inputs: list[str] = []
        self.targets: list[str] = []
        self.scaler: Scaler | None = None
        self.data: dict[str, Windows] = {}

    # -- data --------------------------------------------------------------------------------------------------------
    def path(self) -> Path:
        data = self.cfg.data
        file = Path(str(data.file)).expanduser()
        if file.is_absolute():
            return file
        if not data.get("root"):
            raise base.UserError(f"no data folder: set data.root=<dir> or SUITE_DATA to the folder holding {data.dir}/ "
                                 f"(or data.file=<absolute path to a CSV>)")
        return Path(str(data.root)).expanduser() / str(data.dir) / file

    def read(self, path: Path, saved: bool = False):
        """(dates, input columns, target names) of a CSV; `saved`: with the trained model's channels."""
        data = self.cfg.data
        inputs, targets = (self.inputs, self.targets) if saved else (data.get("inputs"), data.get("targets"))
        return read_series(path, data.get("date_column"), inputs, targets)

    def split_ranges(self, n_rows: int) -> dict[str, tuple[int, int]]:
        borders = self.cfg.data.get("borders")
        return split_rows(n_rows, list(borders) if borders else None, self.config.lookback)

    def prepare(self, run_dir: Path, is_main: bool) -> None:
        """Read the CSV, fit the scaler on the train rows and cut every split into windows (the same on every rank;
        the scaler is saved in config.json with the model)."""
        L, H = self.config.lookback, self.config.horizon
        path = self.path()
        _, frame, self.targets = self.read(path)
        self.inputs = list(frame.columns)
        if len(frame) < L + H:
            raise base.UserError(f"{path} has {len(frame)} rows, fewer than L + H = {L} + {H} = {L + H} that one "
                                 f"window needs; lower task.lookback or task.horizon")
        ranges = self.split_ranges(len(frame))
        values = frame.to_numpy(np.float64)
        self.scaler = Scaler.fit(values[slice(*ranges["train"])])  # train rows only: no peeking at the future
        scaled = self.scaler.transform(values)
        for split, (start, end) in ranges.items():
            if end - start < L + H:
                raise base.UserError(f"the {split} split (rows {start}-{end}) has {end - start} rows, fewer than "
                                     f"L + H = {L} + {H} = {L + H}; use a longer CSV, other data.borders or a "
                                     f"shorter horizon")
            self.data[split] = Windows(scaled[start:end], L, H)
        log.info("%s: %d rows, %d input and %d target channels; windows %s", path.name, len(frame), len(self.inputs),
                 len(self.targets), {s: len(w) for s, w in self.data.items()})

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        if split not in self.data:
            return None
        t = self.cfg.trainer
        return DataLoader(self.data[split], batch_size=t.batch_size if train else t.eval_batch_size, shuffle=train,
                          num_workers=t.num_workers, drop_last=train)  # evaluation keeps every window

    def dataset_name(self) -> str:
        tc = self.config  # MSE at different horizons (or models) are not comparable: the leaderboard says which
        return f"{self.cfg.data.dir} H{tc.horizon} L{tc.lookback} {tc.architecture}"

    # -- model and metrics -------------------------------------------------------------------------------------------
    def model_fields(self) -> dict:
        head = {k: v for k, v in asdict(self.config).items() if k != "name"}  # each is a SuiteConfig field
        return {"stem": "none", **head, "series_channels": self.inputs,
                "target_channels": self.targets, "series_mean": self.scaler.mean.tolist(),
                "series_std": self.scaler.std.tolist()}

    def target_index(self) -> list[int]:
        return [self.inputs.index(c) for c in self.targets]

    def eval_step(self, model, batch) -> list:
        """Per window: mean squared and absolute error of the model and of repeating the last value."""
        targets = self.target_index()
        truth = batch["future_values"][..., targets]
        pred = model(past_values=batch["past_values"])["prediction_outputs"]
        last = batch["past_values"][:, -1:, targets].expand_as(truth)
        errors = [(pred - truth).square(), (pred - truth).abs(), (last - truth).square(), (last - truth).abs()]
        return torch.stack([e.flatten(1).mean(1) for e in errors], 1).tolist()  # (B, 4)

    def compute_metrics(self, records: list) -> dict[str, float]:
        # every window holds H x targets values, so the mean of window means is the mean over all values
        mse, mae, base_mse, base_mae = np.asarray(records, dtype=np.float64).mean(0)
        return {"mse": float(mse), "mae": float(mae), "baseline_mse": float(base_mse), "baseline_mae": float(base_mae)}

    # -- prediction --------------------------------------------------------------------------------------------------
    def load_assets(self, run_dir: Path) -> None:
        """The channels and the scaler, from the model's config.json."""
        try:
            config = json.loads((run_dir / "config.json").read_text())
            self.inputs, self.targets = list(config["series_channels"]), list(config["target_channels"])
            self.scaler = Scaler(np.asarray(config["series_mean"], float), np.asarray(config["series_std"], float))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise base.UserError(f"{run_dir} lacks a readable config.json with the series' channels and scaler "
                                 f"({type(e).__name__}: {e})") from None

    def read_inputs(self) -> list:
        """`csv=<file>`: the series to forecast from (its last L rows), with the training run's columns."""
        if not self.cfg.get("csv"):
            raise base.UserError("mode=predict needs csv=<file with the training data's columns>")
        dates, frame, _ = self.read(Path(str(self.cfg.csv)), saved=True)
        return [(dates, frame)]

    def forecast(self, model, rows: np.ndarray) -> np.ndarray:
        """The model's forecast (H, targets), scaled, from the last L raw rows (L, channels)."""
        past = torch.as_tensor(self.scaler.transform(rows[-self.config.lookback :]), dtype=torch.float32)
        return model(past_values=past[None])["prediction_outputs"][0].double().numpy()

    @torch.no_grad()
    def predict(self, model, inputs: list) -> list[str]:
        """Forecast the H steps after the CSV (or, with backtest=true, its last H rows); write CSV and PNG."""
        (dates, frame), = inputs
        L, H = self.config.lookback, self.config.horizon
        csv, backtest = Path(str(self.cfg.csv)), bool(self.cfg.get("backtest"))
        need = L + H if backtest else L
        if len(frame) < need:
            extra = f" + H = {H} rows to compare with" if backtest else ""
            raise base.UserError(f"{csv} has {len(frame)} rows, fewer than the {need} needed (L = {L} past rows"
                                 f"{extra}; the model forecasts H = {H})")
        end = len(frame) - H if backtest else len(frame)
        values, cols = frame.to_numpy(np.float64), self.target_index()
        pred = self.forecast(model, values[end - L : end])
        index = pd.RangeIndex(end - L, end + H) if dates is None else pd.DatetimeIndex(dates.iloc[end - L : end])
        index = index.append(continue_dates(index, H)) if dates is not None else index
        forecast = pd.DataFrame(self.scaler.inverse(pred, cols), columns=self.targets, index=index[L:])
        forecast.index.name = self.cfg.data.get("date_column") or "step"
        dest = Path(str(self.cfg.get("forecast_out") or f"{csv.stem}_forecast.csv"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        forecast.to_csv(dest)
        history = frame[self.targets].iloc[end - L : end].set_axis(index[:L])
        truth = frame[self.targets].iloc[end:].set_axis(forecast.index) if backtest else None
        plot_forecast(history, forecast, truth, dest.with_suffix(".png"))
        lines = [f"forecast of {H} steps after {history.index[-1]} written to {dest} (plot {dest.with_suffix('.png')})"]
        if truth is not None:
            scaled = self.scaler.transform(values[end:])[:, cols]
            lines.append(f"backtest on the last {H} rows (scaled): mse {np.mean((scaled - pred) ** 2):.4f} "
                         f"mae {np.mean(np.abs(scaled - pred)):.4f}")
        return lines

    @torch.no_grad()
    def attention(self, model, inputs: list | None, path: Path) -> Path:
        """The last target channel's input window (the first test window, or the CSV's last L rows), shaded by the
        attention each patch receives (last encoder layer, mean over queries and heads), then forecast and truth."""
        tc, L, H = self.config, self.config.lookback, self.config.horizon
        if inputs is None:
            _, frame, _ = self.read(self.path(), saved=True)
            start = self.split_ranges(len(frame))["test"][0]
            rows = frame.to_numpy(np.float64)[start : start + L + H]
        else:
            rows = inputs[0][1].to_numpy(np.float64)[-L:]
        if len(rows) < L:
            raise base.UserError(f"the series has {len(rows)} rows, fewer than the L = {L} the model reads")
        with record_attention() as records:
            pred = self.forecast(model, rows[:L])
        name = self.targets[-1]
        c = self.inputs.index(name)
        if tc.architecture == "patch":  # channel c is sequence c of the batch; its tokens are overlapping patches
            weights, size, stride = last_layer(records, index=c), tc.patch_len, tc.patch_stride
        else:  # the encoder's calls come first; its tokens are single steps
            weights, size, stride = last_layer(records[: self.model_cfg.n_layers]), 1, 1
        received = weights.mean(0).numpy()  # (N,)
        starts = np.arange(len(received)) * stride
        per_step, count = np.zeros(L), np.zeros(L)
        for a, r in zip(starts, received):  # a step's shade: the mean over the patches holding it
            per_step[a : a + size] += r
            count[a : a + size] += 1
        token = "patch" if size > 1 else "step"
        fig, top, strip = panels_with_strip(f"{name}: input window shaded by the attention each {token} receives "
                                            f"(last encoder layer, mean over queries and heads)")
        forecast = self.scaler.inverse(pred[:, self.targets.index(name)], [c])
        top.plot(np.arange(-L, 0), rows[:L, c], color="0.2", lw=1, label="input")
        if len(rows) == L + H:
            top.plot(np.arange(H), rows[L:, c], color="tab:green", lw=1, label="truth")
        top.plot(np.arange(H), forecast, color="tab:red", lw=1.2, label="forecast")
        shade_by_step(top, per_step / np.maximum(count, 1), x0=-L)
        top.legend(loc="upper left", ncol=3, fontsize=8)
        top.set_xlim(-L - 1, H)
        centres = starts + size / 2 - L
        attention_strip(strip, centres - stride / 2, np.full(len(received), stride), received, "attention\nreceived")
        strip.set_xlabel("step (0 = first forecast step); one bar per token at its centre")
        return save(fig, path)
