"""The forecasting head: reversible instance normalisation around PatchTST's patches or the original encoder-decoder.

`SuiteForForecasting` (`AutoModelForTimeSeriesPrediction`) reads `past_values` (B, L, C), the last L steps of every
input channel, and forecasts the next H steps of the target channels. Its inputs are the series standardised by the
training rows' scaler, which config.json carries (`series_mean`, `series_std`, one per channel of
`series_channels`), so a run folder alone turns a raw CSV into a forecast. Imports: torch, transformers and the
suite's model files only (see modeling.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .modeling import SuiteConfig, SuitePreTrainedModel
from .transformer import Encoder, EncoderDecoder

ARCHITECTURES = ("patch", "encdec")


@dataclass
class ForecastOutput(ModelOutput):
    """The forecast and, when `future_values` are given, its loss (named as transformers' PatchTST names them)."""

    loss: torch.Tensor | None = None  # MSE over the target channels
    prediction_outputs: torch.Tensor | None = None  # (B, H, targets)


class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al., 2022): scale each window's channels by their own statistics,
    forecast in that frame, then undo it, so a level shift between train and test years costs nothing."""

    def __init__(self, channels: int, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(channels)) if affine else None
        self.bias = nn.Parameter(torch.empty(channels)) if affine else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The identity: weight 1, bias 0 (here, not in __init__: transformers initialises module by module)."""
        if self.weight is not None:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

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


def patch_count(config: SuiteConfig) -> int:
    """Patch tokens per channel: every `patch_stride` steps, plus one made by padding the end by a stride."""
    return (config.lookback - config.patch_len) // config.patch_stride + 2


class PatchNet(nn.Module):
    """PatchTST (Nie et al., 2023): each channel alone is cut into overlapping patches, embedded as tokens, run
    through the shared encoder, and its tokens flattened into a linear map to the horizon (channel independence)."""

    def __init__(self, config: SuiteConfig):
        super().__init__()
        self.patch, self.stride = config.patch_len, config.patch_stride
        self.embed = nn.Linear(config.patch_len, config.d_model)
        self.encoder = Encoder(config.core())
        self.head = nn.Sequential(nn.Flatten(1), nn.Dropout(config.head_dropout),
                                  nn.Linear(patch_count(config) * config.d_model, config.horizon))

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

    def __init__(self, config: SuiteConfig):
        super().__init__()
        C = len(config.series_channels)
        self.horizon, self.label_len = config.horizon, min(config.label_len, config.lookback)
        self.src_embed, self.tgt_embed = nn.Linear(C, config.d_model), nn.Linear(C, config.d_model)
        self.transformer = EncoderDecoder(config.core())
        self.head = nn.Linear(config.d_model, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        start = torch.cat([x[:, L - self.label_len :], x.new_zeros(B, self.horizon, C)], 1)  # (B, label + H, C)
        h = self.transformer(self.src_embed(x), self.tgt_embed(start))  # (B, label + H, D)
        return self.head(h[:, -self.horizon :])  # (B, H, C)


class SuiteForForecasting(SuitePreTrainedModel):
    """RevIN around a network mapping (B, L, C) to (B, H, C) (`config.architecture`: patch | encdec); returns the
    target channels' forecast and, given `future_values` (B, H, C), its MSE."""

    pipeline_tag = "time-series-forecasting"

    main_input_name = "past_values"

    def __init__(self, config: SuiteConfig):
        super().__init__(config)
        channels = list(config.series_channels or [])
        targets = list(config.target_channels or channels)
        if not channels or not set(targets) <= set(channels):
            raise ValueError(f"config.series_channels={channels} must name the input channels and "
                             f"config.target_channels={targets} some of them")
        if config.architecture not in ARCHITECTURES:
            raise ValueError(f"config.architecture={config.architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
        # a plain list, not a buffer: config.json holds it, so there is nothing to save or to initialise
        self.targets = [channels.index(c) for c in targets]
        self.net = PatchNet(config) if config.architecture == "patch" else EncDecNet(config)
        self.revin = RevIN(len(channels)) if config.revin else None
        self.post_init()

    def forward(self, past_values: torch.Tensor, future_values: torch.Tensor | None = None,
                **kwargs) -> ForecastOutput:
        """past_values (B, L, C) and future_values (B, H, C): every input channel, scaled by the config's scaler."""
        past_values = past_values.contiguous()  # one memory layout (a pandas array is column-major): the same numbers
        # give the same forecast to the last bit, however the caller built them
        x, stats = self.revin.normalize(past_values) if self.revin is not None else (past_values, None)
        y = self.net(x).float()  # (B, H, C); float32 even under bf16 autocast
        y = self.revin.denormalize(y, stats) if self.revin is not None else y
        prediction = y[..., self.targets]  # (B, H, targets)
        loss = None if future_values is None else F.mse_loss(prediction, future_values[..., self.targets])
        return ForecastOutput(loss=loss, prediction_outputs=prediction)
