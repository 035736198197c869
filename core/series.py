"""Time series as the forecasting protocol of Informer / Autoformer / PatchTST reads them, and their plots.

A CSV of numeric columns (plus an optional date column) -> missing cells filled forward -> fixed row borders per
split -> a scaler fitted on the train rows only -> every window of L past and H future steps at stride 1.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from core.task import UserError

log = logging.getLogger(__name__)


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
    """Every (past L steps, next H steps) pair of a (rows, channels) series at stride 1, named as the model reads
    them (`past_values`, `future_values`)."""

    def __init__(self, series: np.ndarray, lookback: int, horizon: int):
        self.series = torch.as_tensor(series, dtype=torch.float32)
        self.L, self.H = lookback, horizon

    def __len__(self) -> int:
        return max(0, len(self.series) - self.L - self.H + 1)

    def __getitem__(self, i: int) -> dict:
        L, H = self.L, self.H
        return {"past_values": self.series[i : i + L], "future_values": self.series[i + L : i + L + H]}


def split_rows(n_rows: int, borders: list[int] | None, lookback: int) -> dict[str, tuple[int, int]]:
    """Row ranges per split; validation and test start L rows early so their first window ends at the border.

    `borders` are the ends of train, validation and test ([8640, 11520, 14400] for ETTh1); None means 70/10/20% of
    the file, as Time-Series-Library does for a custom CSV."""
    if borders is None:
        n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
        borders = [n_train, n_rows - n_test, n_rows]
    if len(borders) != 3:
        raise UserError(f"data.borders={list(borders)} must give 3 row numbers: the ends of train, validation, test")
    b1, b2, b3 = borders
    if not 0 < b1 < b2 < b3 or b3 > n_rows:
        raise UserError(f"data.borders={list(borders)} must be increasing and end within the file's {n_rows} "
                        f"rows; set data.borders=null for a 70/10/20 split")
    return {"train": (0, b1), "validation": (max(0, b1 - lookback), b2), "test": (max(0, b2 - lookback), b3)}


def fill_missing(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Empty, NaN or non-numeric cells -> the last value before them (the next one at the very start), counted."""
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    missing = numeric.isna().sum()
    if missing.sum():
        if numeric.isna().all().any():
            raise UserError(f"{name}: column(s) {list(missing[numeric.isna().all()].index)} hold no numbers")
        detail = ", ".join(f"{c}: {n}" for c, n in missing.items() if n)
        log.warning("%s: filled %d missing values forward (%s)", name, missing.sum(), detail)
    return numeric.ffill().bfill()


def read_series(path: Path, date_column: str | None, inputs: list[str] | None, targets: list[str] | None
                ) -> tuple[pd.Series | None, pd.DataFrame, list[str]]:
    """The CSV's timestamps (or None), its input columns (missing values filled) and the target column names.

    `inputs` None: every column but the date; `targets` None: the inputs (a multivariate forecast)."""
    if not path.is_file():
        raise UserError(f"CSV file {path} not found (set data.root / SUITE_DATA, data.dir and data.file)")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"could not read {path} as CSV: {str(e).splitlines()[0]}") from None
    inputs = list(inputs) if inputs else [c for c in frame.columns if c != date_column]
    targets = list(targets) if targets else inputs
    for key, names in (("data.date_column", [date_column] if date_column else []), ("data.inputs", inputs)):
        absent = [c for c in names if c not in frame.columns]
        if absent:
            raise UserError(f"column(s) {absent} named in {key} are not in {path} (columns: {list(frame.columns)})")
    if not set(targets) <= set(inputs):
        raise UserError(f"data.targets {sorted(set(targets) - set(inputs))} must also be in data.inputs "
                        f"(the model sees every channel it forecasts)")
    dates = pd.to_datetime(frame[date_column], errors="coerce") if date_column else None
    return dates, fill_missing(frame[inputs], path.name), targets


def continue_dates(dates: pd.DatetimeIndex, steps: int) -> pd.DatetimeIndex:
    """The `steps` timestamps after `dates`, at their frequency (inferred, else their most common gap)."""
    known = dates.dropna()
    if len(known) < 2:
        raise UserError("the date column needs at least 2 readable timestamps to continue them")
    try:
        with warnings.catch_warnings():  # pandas 3 warns that infer_freq will return an offset; both work below
            warnings.simplefilter("ignore")
            freq = pd.infer_freq(known[-50:]) if len(known) >= 3 else None
    except (TypeError, ValueError):
        freq = None
    step = freq or known.to_series().diff().mode().iloc[0]
    return pd.date_range(known[-1], periods=steps + 1, freq=step)[1:]


def plot_forecast(history: pd.DataFrame, forecast: pd.DataFrame, truth: pd.DataFrame | None, path: Path) -> None:
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
