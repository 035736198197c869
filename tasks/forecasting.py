"""Long-horizon time-series forecasting (ETTh1 by default): RevIN -> per-channel patches -> shared encoder -> head.

The standard protocol of Informer / Autoformer / PatchTST: fixed row borders (train [0, 8640), validation
[8640 - L, 11520), test [11520 - L, 14400) on ETTh1), a scaler fitted on the train rows only, every window of
L past and H future steps at stride 1, and MSE / MAE on the scaled data. The second variant (`task.architecture=
encdec`) is the original Transformer's encoder-decoder over whole time steps, to show what patching buys.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core import task as base
from core.attention import attention_strip, last_layer, panels_with_strip, save, shade_by_step
from core.transformer import Encoder, EncoderDecoder, TransformerConfig, init_weights, record_attention

log = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")


# -- data ------------------------------------------------------------------------------------------------------------
@dataclass
class Scaler:
    """Per-column standardisation, (x - mean) / std with ddof=0 (sklearn's StandardScaler), fitted on train rows."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray) -> Scaler:
        std = rows.std(0)
        return cls(rows.mean(0), np.where(std > 0, std, 1.0))  # a constant column stays as it is, not inf

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def inverse(self, x: np.ndarray, columns: list[int]) -> np.ndarray:
        return x * self.std[columns] + self.mean[columns]


class Windows(Dataset):
    """Every (past L steps, next H steps) pair of a (rows, channels) series at stride 1."""

    def __init__(self, series: np.ndarray, lookback: int, horizon: int):
        self.series = torch.as_tensor(series, dtype=torch.float32)
        self.L, self.H = lookback, horizon

    def __len__(self) -> int:
        return max(0, len(self.series) - self.L - self.H + 1)

    def __getitem__(self, i: int) -> dict:
        return {"past": self.series[i : i + self.L], "future": self.series[i + self.L : i + self.L + self.H]}


def split_rows(n_rows: int, borders: list[int] | None, lookback: int) -> dict[str, tuple[int, int]]:
    """Row ranges per split; validation and test start L rows early so their first window ends at the border.

    `borders` are the ends of train, validation and test ([8640, 11520, 14400] for ETTh1); None means 70/10/20% of
    the file, as Time-Series-Library does for a custom CSV."""
    if borders is None:
        n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
        borders = [n_train, n_rows - n_test, n_rows]
    b1, b2, b3 = borders
    if not 0 < b1 < b2 < b3 or b3 > n_rows:
        raise base.UserError(f"data.borders={list(borders)} must be increasing and end within the file's {n_rows} "
                             f"rows; set data.borders=null for a 70/10/20 split")
    return {"train": (0, b1), "validation": (max(0, b1 - lookback), b2), "test": (max(0, b2 - lookback), b3)}


def fill_missing(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Empty, NaN or non-numeric cells -> the last value before them (the next one at the very start), counted."""
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    missing = numeric.isna().sum()
    if missing.sum():
        if numeric.isna().all().any():
            raise base.UserError(f"{name}: column(s) {list(missing[numeric.isna().all()].index)} hold no numbers")
        detail = ", ".join(f"{c}: {n}" for c, n in missing.items() if n)
        log.warning("%s: filled %d missing values forward (%s)", name, missing.sum(), detail)
    return numeric.ffill().bfill()


def read_series(path: Path, data) -> tuple[pd.Series | None, pd.DataFrame, list[str]]:
    """The CSV's timestamps (or None), its input columns (missing values filled) and the target column names."""
    if not path.is_file():
        raise base.UserError(f"CSV file {path} not found (set data.root / SUITE_DATA, data.dir and data.file)")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise base.UserError(f"could not read {path} as CSV: {str(e).splitlines()[0]}") from None
    date = data.get("date_column")
    inputs = list(data["inputs"]) if data.get("inputs") else [c for c in frame.columns if c != date]
    targets = list(data["targets"]) if data.get("targets") else inputs
    for key, names in (("data.date_column", [date] if date else []), ("data.inputs", inputs)):
        absent = [c for c in names if c not in frame.columns]
        if absent:
            raise base.UserError(f"column(s) {absent} named in {key} are not in {path} "
                                 f"(columns: {list(frame.columns)})")
    if not set(targets) <= set(inputs):
        raise base.UserError(f"data.targets {sorted(set(targets) - set(inputs))} must also be in data.inputs "
                             f"(the model sees every channel it forecasts)")
    dates = pd.to_datetime(frame[date], errors="coerce") if date else None
    return dates, fill_missing(frame[inputs], path.name), targets


# -- model -----------------------------------------------------------------------------------------------------------
class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al., 2022): scale each window's channels by their own statistics,
    forecast in that frame, then undo it, so a level shift between train and test years costs nothing."""

    def __init__(self, channels: int, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, L, C) -> normalised x and the (mean, std) to undo it with, each (B, 1, C)."""
        mean = x.mean(1, keepdim=True).detach()
        std = (x.var(1, keepdim=True, unbiased=False) + self.eps).sqrt().detach()
        x = (x - mean) / std
        return (x * self.weight + self.bias, (mean, std)) if self.weight is not None else (x, (mean, std))

    def denormalize(self, y: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        mean, std = stats
        if self.weight is not None:
            y = (y - self.bias) / (self.weight + self.eps**2)
        return y * std + mean


class PatchNet(nn.Module):
    """PatchTST (Nie et al., 2023): each channel alone is cut into overlapping patches, embedded as tokens, run
    through the shared encoder, and its tokens flattened into a linear map to the horizon (channel independence)."""

    def __init__(self, cfg: TransformerConfig, lookback: int, horizon: int, patch: int, stride: int,
                 head_dropout: float):
        super().__init__()
        self.patch, self.stride = patch, stride
        n_patches = (lookback - patch) // stride + 2  # +1 for the patch made by padding the end by `stride` steps
        self.embed = nn.Linear(patch, cfg.d_model)
        self.encoder = Encoder(cfg)
        self.head = nn.Sequential(nn.Flatten(1), nn.Dropout(head_dropout), nn.Linear(n_patches * cfg.d_model, horizon))
        init_weights(self.encoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        x = x.transpose(1, 2).reshape(B * C, L)  # (B*C, L): every channel is its own sequence
        x = torch.cat([x, x[:, -1:].expand(-1, self.stride)], 1)  # repeat the last value (PatchTST's end padding)
        patches = x.unfold(1, self.patch, self.stride)  # (B*C, N, P)
        h = self.encoder(self.embed(patches))  # (B*C, N, D)
        return self.head(h).view(B, C, -1).transpose(1, 2)  # (B, H, C)


class EncDecNet(nn.Module):
    """The original Transformer on time steps (Informer's set-up): the encoder reads the L past steps, the decoder
    reads the last `label_len` of them followed by H zeros and emits all H steps at once."""

    def __init__(self, cfg: TransformerConfig, channels: int, horizon: int, label_len: int):
        super().__init__()
        self.horizon, self.label_len = horizon, label_len
        self.src_embed, self.tgt_embed = nn.Linear(channels, cfg.d_model), nn.Linear(channels, cfg.d_model)
        self.transformer = EncoderDecoder(cfg)
        self.head = nn.Linear(cfg.d_model, channels)
        init_weights(self.transformer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        start = torch.cat([x[:, L - self.label_len :], x.new_zeros(B, self.horizon, C)], 1)  # (B, label + H, C)
        h = self.transformer(self.src_embed(x), self.tgt_embed(start))  # (B, label + H, D)
        return self.head(h[:, -self.horizon :])  # (B, H, C)


class Forecaster(nn.Module):
    """RevIN around a network mapping (B, L, C) to (B, H, C); returns the target channels and their MSE loss."""

    def __init__(self, net: nn.Module, channels: int, targets: list[int], revin: bool):
        super().__init__()
        self.net, self.revin = net, RevIN(channels) if revin else None
        self.register_buffer("targets", torch.tensor(targets), persistent=False)

    def forward(self, past: torch.Tensor, future: torch.Tensor | None = None) -> dict:
        x, stats = self.revin.normalize(past) if self.revin is not None else (past, None)
        y = self.net(x).float()  # (B, H, C); float32 even under bf16 autocast
        y = self.revin.denormalize(y, stats) if self.revin is not None else y
        out = {"prediction": y[..., self.targets]}  # (B, H, targets)
        if future is not None:
            out["loss"] = F.mse_loss(out["prediction"], future[..., self.targets])
        return out


# -- the task --------------------------------------------------------------------------------------------------------
class Task(base.Task):
    """Forecast H steps from L; metrics `mse` and `mae` on scaled data, and the repeat-last-value `baseline_*`."""

    metric = "mse"
    greater_is_better = False

    def __init__(self, cfg):
        super().__init__(cfg)
        tc = cfg.task
        if tc.architecture not in ("patch", "encdec"):
            raise base.UserError(f"task.architecture={tc.architecture!r}: choose patch or encdec")
        if min(tc.lookback, tc.horizon) < 1 or (tc.architecture == "patch" and tc.lookback < tc.patch_len):
            raise base.UserError(f"task.lookback={tc.lookback}, task.horizon={tc.horizon}: both must be positive and "
                                 f"the look-back at least task.patch_len={tc.patch_len}")
        self.inputs: list[str] = []
        self.targets: list[str] = []
        self.scaler: Scaler | None = None
        self.data: dict[str, Windows] = {}

    def path(self) -> Path:
        data = self.cfg.data
        file = Path(str(data.file)).expanduser()
        if file.is_absolute():
            return file
        if not data.get("root"):
            raise base.UserError(f"no data folder: set data.root=<dir> or SUITE_DATA to the folder holding {data.dir}/ "
                                 f"(or data.file=<absolute path to a CSV>)")
        return Path(str(data.root)).expanduser() / str(data.dir) / file

    def prepare(self, run_dir: Path, is_main: bool) -> None:
        L, H = self.cfg.task.lookback, self.cfg.task.horizon
        path = self.path()
        _, frame, self.targets = read_series(path, self.cfg.data)
        self.inputs = list(frame.columns)
        if len(frame) < L + H:
            raise base.UserError(f"{path} has {len(frame)} rows, fewer than L + H = {L} + {H} = {L + H} that one "
                                 f"window needs; lower task.lookback or task.horizon")
        borders = self.cfg.data.get("borders")
        ranges = split_rows(len(frame), list(borders) if borders else None, L)
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
        if is_main:
            assets = {"inputs": self.inputs, "targets": self.targets, "mean": self.scaler.mean.tolist(),
                      "std": self.scaler.std.tolist()}
            (run_dir / "scaler.json").write_text(json.dumps(assets, indent=2))

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        if split not in self.data:
            return None
        t = self.cfg.trainer
        return DataLoader(self.data[split], batch_size=t.batch_size if train else t.eval_batch_size, shuffle=train,
                          num_workers=t.num_workers, drop_last=train)  # evaluation keeps every window

    def dataset_name(self) -> str:
        tc = self.cfg.task  # MSE at different horizons (or models) are not comparable: the leaderboard says which
        return f"{self.cfg.data.dir} H{tc.horizon} L{tc.lookback} {tc.architecture}"

    # -- model and metrics -------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        tc, cfg, C = self.cfg.task, self.model_cfg, len(self.inputs)
        if tc.architecture == "patch":
            net = PatchNet(cfg, tc.lookback, tc.horizon, tc.patch_len, tc.patch_stride, tc.head_dropout)
        else:
            label_len = min(tc.label_len, tc.lookback)
            if max(tc.lookback, label_len + tc.horizon) > cfg.max_len:
                raise base.UserError(f"the encoder-decoder needs model.max_len >= {tc.lookback} and "
                                     f"{label_len + tc.horizon} (L and label_len + H)")
            net = EncDecNet(cfg, C, tc.horizon, label_len)
        return Forecaster(net, C, [self.inputs.index(c) for c in self.targets], tc.revin)

    def model_extras(self) -> dict:
        tc = self.cfg.task
        return {"architecture": tc.architecture, "lookback": tc.lookback, "horizon": tc.horizon,
                "inputs": self.inputs, "targets": self.targets}

    def eval_step(self, model, batch) -> list:
        """Per window: mean squared and absolute error of the model and of repeating the last value."""
        targets = torch.tensor([self.inputs.index(c) for c in self.targets], device=batch["past"].device)
        truth = batch["future"][..., targets]
        pred = model(past=batch["past"])["prediction"]
        last = batch["past"][:, -1:, targets].expand_as(truth)
        errors = [(pred - truth).square(), (pred - truth).abs(), (last - truth).square(), (last - truth).abs()]
        return torch.stack([e.flatten(1).mean(1) for e in errors], 1).tolist()  # (B, 4)

    def compute_metrics(self, records: list) -> dict[str, float]:
        # every window holds H x targets values, so the mean of window means is the mean over all values
        mse, mae, base_mse, base_mae = np.asarray(records, dtype=np.float64).mean(0)
        return {"mse": float(mse), "mae": float(mae), "baseline_mse": float(base_mse), "baseline_mae": float(base_mae)}

    # -- prediction --------------------------------------------------------------------------------------------------
    def load_assets(self, run_dir: Path) -> None:
        try:
            assets = json.loads((run_dir / "scaler.json").read_text())
        except (OSError, ValueError) as e:
            raise base.UserError(f"{run_dir} lacks a readable scaler.json ({e})") from None
        self.inputs, self.targets = assets["inputs"], assets["targets"]
        self.scaler = Scaler(np.asarray(assets["mean"]), np.asarray(assets["std"]))

    def read_inputs(self) -> list:
        """`csv=<file>`: the series to forecast from (its last L rows), with the training run's columns."""
        if not self.cfg.get("csv"):
            raise base.UserError("mode=predict needs csv=<file with the training data's columns>")
        data = {**self.cfg.data, "inputs": self.inputs, "targets": self.targets}
        dates, frame, _ = read_series(Path(str(self.cfg.csv)), data)
        return [(dates, frame)]

    @torch.no_grad()
    def predict(self, model, inputs: list) -> list[str]:
        """Forecast the H steps after the CSV (or, with backtest=true, its last H rows); write CSV and PNG."""
        (dates, frame), = inputs
        L, H = self.cfg.task.lookback, self.cfg.task.horizon
        csv, backtest = Path(str(self.cfg.csv)), bool(self.cfg.get("backtest"))
        need = L + H if backtest else L
        if len(frame) < need:
            extra = f" + H = {H} rows to compare with" if backtest else ""
            raise base.UserError(f"{csv} has {len(frame)} rows, fewer than the {need} needed (L = {L} past rows"
                                 f"{extra}; the model forecasts H = {H})")
        end = len(frame) - H if backtest else len(frame)
        past = torch.as_tensor(self.scaler.transform(frame.to_numpy(np.float64)[end - L : end]), dtype=torch.float32)
        pred = model(past=past[None])["prediction"][0].numpy().astype(np.float64)  # (H, targets), scaled
        cols = [self.inputs.index(c) for c in self.targets]
        index = pd.RangeIndex(end - L, end + H) if dates is None else pd.DatetimeIndex(dates.iloc[end - L : end])
        index = index.append(continue_dates(index, H)) if dates is not None else index
        forecast = pd.DataFrame(self.scaler.inverse(pred, cols), columns=self.targets, index=index[L:])
        forecast.index.name = self.cfg.data.get("date_column") or "step"
        dest = Path(str(self.cfg.get("forecast_out") or f"{csv.stem}_forecast.csv"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        forecast.to_csv(dest)
        history = frame[self.targets].iloc[end - L : end].set_axis(index[:L])
        truth = frame[self.targets].iloc[end:].set_axis(forecast.index) if backtest else None
        plot(history, forecast, truth, dest.with_suffix(".png"))
        lines = [f"forecast of {H} steps after {history.index[-1]} written to {dest} (plot {dest.with_suffix('.png')})"]
        if truth is not None:
            scaled = self.scaler.transform(frame.to_numpy(np.float64)[end:])[:, cols]
            lines.append(f"backtest on the last {H} rows (scaled): mse {np.mean((scaled - pred) ** 2):.4f} "
                         f"mae {np.mean(np.abs(scaled - pred)):.4f}")
        return lines

    @torch.no_grad()
    def attention(self, model, inputs: list | None, path: Path) -> Path:
        """The last target channel's input window (the first test window, or the CSV's last L rows), shaded by the
        attention each patch receives (last encoder layer, mean over queries and heads), then forecast and truth."""
        tc, L, H = self.cfg.task, self.cfg.task.lookback, self.cfg.task.horizon
        if inputs is None:
            _, frame, _ = read_series(self.path(), self.cfg.data)
            borders = self.cfg.data.get("borders")
            start = split_rows(len(frame), list(borders) if borders else None, L)["test"][0]
            rows = frame.to_numpy(np.float64)[start : start + L + H]
        else:
            rows = inputs[0][1].to_numpy(np.float64)[-L:]
        if len(rows) < L:
            raise base.UserError(f"the series has {len(rows)} rows, fewer than the L = {L} the model reads")
        with record_attention() as records:
            pred = model(past=torch.as_tensor(self.scaler.transform(rows[:L]), dtype=torch.float32)[None])
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
        forecast = self.scaler.inverse(pred["prediction"][0, :, self.targets.index(name)].double().numpy(), [c])
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


def continue_dates(dates: pd.DatetimeIndex, steps: int) -> pd.DatetimeIndex:
    """The `steps` timestamps after `dates`, at their frequency (inferred, else their most common gap)."""
    known = dates.dropna()
    if len(known) < 2:
        raise base.UserError("the date column needs at least 2 readable timestamps to continue them")
    try:
        with warnings.catch_warnings():  # pandas 3 warns that infer_freq will return an offset; both work below
            warnings.simplefilter("ignore")
            freq = pd.infer_freq(known[-50:]) if len(known) >= 3 else None
    except (TypeError, ValueError):
        freq = None
    step = freq or known.to_series().diff().mode().iloc[0]
    return pd.date_range(known[-1], periods=steps + 1, freq=step)[1:]


def plot(history: pd.DataFrame, forecast: pd.DataFrame, truth: pd.DataFrame | None, path: Path) -> None:
    """One panel per target channel: history, forecast and (when known) the truth."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global

    fig = Figure(figsize=(10, 1.8 + 1.6 * len(forecast.columns)))
    axes = fig.subplots(len(forecast.columns), 1, sharex=True, squeeze=False)[:, 0]
    for ax, col in zip(axes, forecast.columns):
        ax.plot(history.index, history[col], color="0.35", lw=1, label="history")
        if truth is not None:
            ax.plot(truth.index, truth[col], color="tab:green", lw=1, label="truth")
        ax.plot(forecast.index, forecast[col], color="tab:red", lw=1.2, label="forecast")
        ax.set_ylabel(col)
    axes[0].legend(loc="upper left", ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
