"""Stems: what turns a task's input into the (B, S, D) vectors the shared core reads, with their padding mask.

One per modality, chosen by `config.stem`: token ids (`TextStem`), pixels (`ImageStem`), log-mel frames
(`AudioStem`). Each returns `(x, padding_mask)`, the mask (B, S) True at real positions or None when every
position is real. Like `modeling.py`, this file imports only torch and the core, so run folders can carry it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .transformer import ACTIVATIONS


class Embedding(nn.Embedding):
    """nn.Embedding drawn from N(0, std^2) (PyTorch draws N(0, 1)), the padding row included."""

    def __init__(self, num: int, dim: int, std: float, padding_idx: int | None = None):
        self.std = std
        super().__init__(num, dim, padding_idx=padding_idx)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.std)


class TextStem(nn.Module):
    """Token ids (+ token types) -> vectors, times sqrt(D) as the paper does (unless `config.embed_scale` is off)."""

    def __init__(self, config):
        super().__init__()
        D = config.d_model
        self.tokens = Embedding(config.vocab_size, D, D**-0.5, config.pad_token_id)  # unit norm once scaled
        self.types = Embedding(config.type_vocab_size, D, 0.02) if config.type_vocab_size else None
        self.scale = math.sqrt(D) if config.embed_scale else 1.0

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **unused):
        x = self.tokens(input_ids) * self.scale  # (B, S, D)
        if self.types is not None:
            x = x + self.types(token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids))
        return x, (attention_mask.bool() if attention_mask is not None else None)


def sincos2d_table(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions (MoCo v3, big_vision): a quarter of D each for sin(row), sin(column),
    cos(row), cos(column) at D/4 frequencies; (H/P * W/P, D) in row-major patch order (timm's layout)."""
    bands = 1.0 / temperature ** (torch.arange(dim // 4) / (dim // 4))  # (D/4,)
    rows, cols = torch.meshgrid(torch.arange(grid[0]).float(), torch.arange(grid[1]).float(), indexing="ij")
    angles = torch.stack([rows.flatten(), cols.flatten()], 1)[:, :, None] * bands  # (N, 2, D/4)
    return torch.stack([angles.sin(), angles.cos()], 1).flatten(1)  # (N, D)


class ConvPatches(nn.Module):
    """The convolutional stem of Xiao et al. (2021, "Early convolutions help transformers see better"), the ViT
    paper's hybrid input: log2(P) 3x3 stride-2 convolutions (BatchNorm, ReLU), widening to D, then a 1x1
    convolution to D. The same (H/P, W/P) grid of D-vectors as a patch embedding, from overlapping windows."""

    def __init__(self, patch_size: int, channels: int, d_model: int):
        super().__init__()
        n = int(math.log2(patch_size))
        if 2**n != patch_size:
            raise ValueError(f"a convolutional stem halves the image per layer: patch size {patch_size} must be a "
                             f"power of 2")
        widths = [channels] + [d_model // 2 ** (n - 1 - i) for i in range(n)]  # P=4, D=128: C -> 64 -> 128
        layers = []
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.convs = nn.Sequential(*layers, nn.Conv2d(widths[-1], d_model, 1))

    def forward(self, images):
        return self.convs(images)  # (B, D, H/P, W/P)


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, PIL's RGB -> L conversion


class ImageStem(nn.Module):
    """Pixels (B, C, H, W) in [0, 1] -> patch vectors with 2-D positions, a class token first if any: (B, [1+]N, D).

    An RGB input to a greyscale model is converted as PIL converts to "L" (transformers' image pipeline hands
    every image over as RGB), and a greyscale input to an RGB model is repeated over the channels."""

    def __init__(self, config):
        super().__init__()
        D, P, C = config.d_model, config.patch_size, config.num_channels
        H, W = config.image_size
        if H % P or W % P:
            raise ValueError(f"image size {H}x{W} must divide by the patch size {P}")
        self.grid = (H // P, W // P)
        self.channels = C
        if config.image_stem == "conv":
            self.patch = ConvPatches(P, C, D)
        else:  # the paper's linear embedding of each P x P patch, as a convolution
            self.patch = nn.Conv2d(C, D, P, stride=P)
        self.cls = nn.Parameter(torch.zeros(1, 1, D)) if config.cls_token else None
        n = self.grid[0] * self.grid[1] + (self.cls is not None)  # the class token's row is 0 under sincos2d
        self.learned = config.patch_position == "learned"
        if self.learned:  # ViT: one vector per patch and for the class token
            self.pos = nn.Parameter(torch.empty(1, n, D))
        else:
            self.register_buffer("pos", torch.empty(1, n, D), persistent=False)
        mean, std = config.pixel_mean or [0.5] * C, config.pixel_std or [0.5] * C
        self.register_buffer("mean", torch.tensor(mean).view(1, C, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, C, 1, 1), persistent=False)
        self.pixel_stats = (mean, std)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.mean.copy_(torch.tensor(self.pixel_stats[0]).view_as(self.mean))
            self.std.copy_(torch.tensor(self.pixel_stats[1]).view_as(self.std))
            if self.learned:
                nn.init.normal_(self.pos, std=0.02)
            else:
                table = sincos2d_table(self.grid, self.pos.size(-1))
                self.pos.copy_(torch.cat([torch.zeros(len(self.pos[0]) - len(table), table.size(1)), table])[None])
        if self.cls is not None:
            nn.init.zeros_(self.cls)

    def forward(self, pixel_values, **unused):
        x = pixel_values
        if x.size(1) == 3 and self.channels == 1:
            x = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif x.size(1) == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        x = self.patch((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))  # (B, D, H/P, W/P)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), patches in row-major order
        if self.cls is not None:
            x = torch.cat([self.cls.expand(len(x), -1, -1).to(x.dtype), x], dim=1)  # (B, 1 + N, D)
        return x + self.pos.to(x.dtype), None


class AudioStem(nn.Module):
    """Log-mel frames (B, T, n_mels) -> fewer, D-wide frames, with the mask of the real ones.

    `conv2d` (the suite's, Conformer's): two 3x3 stride-2 convolutions over (time, mel) then a linear map to D,
    4x fewer frames. `conv1d` (Whisper's): two 1-D convolutions over time with GELU, the second of stride 2."""

    receptive_field = 7  # conv2d: input frames behind one output frame

    def __init__(self, config):
        super().__init__()
        self.kind, M, D = config.audio_stem, config.n_mels, config.d_model
        if self.kind == "conv1d":
            self.conv1 = nn.Conv1d(M, D, 3, padding=1)
            self.conv2 = nn.Conv1d(D, D, 3, stride=2, padding=1)
            self.act = ACTIVATIONS["gelu"]()
        else:
            C = config.stem_channels
            self.conv = nn.Sequential(nn.Conv2d(1, C, 3, 2), nn.ReLU(), nn.Conv2d(C, C, 3, 2), nn.ReLU())
            self.out = nn.Linear(C * (((M - 1) // 2 - 1) // 2), D)

    def lengths(self, frames: torch.Tensor) -> torch.Tensor:
        """Output frames of inputs of `frames` frames."""
        if self.kind == "conv1d":
            return (frames - 1) // 2 + 1
        return ((frames - 1) // 2 - 1) // 2  # each unpadded 3-wide stride-2 conv: L -> (L - 1) // 2

    def forward(self, input_features, attention_mask=None, **unused):
        B, T, _ = input_features.shape
        if self.kind == "conv1d":
            x = self.act(self.conv2(self.act(self.conv1(input_features.transpose(1, 2)))))  # (B, D, T/2)
            x = x.transpose(1, 2)
        else:
            x = self.conv(input_features[:, None])  # (B, C, T/4, M/4)
            x = self.out(x.transpose(1, 2).flatten(2))  # (B, T/4, D)
        frames = attention_mask.sum(1) if attention_mask is not None else torch.full((B,), T, device=x.device)
        mask = torch.arange(x.size(1), device=x.device)[None] < self.lengths(frames)[:, None]  # (B, S)
        return x, mask


class NoStem(nn.Module):
    """For heads that embed their input themselves (sequence-to-sequence, forecasting)."""

    def forward(self, **unused):
        raise TypeError("this model's head embeds its own inputs")


STEMS = {"text": TextStem, "image": ImageStem, "audio": AudioStem}


def make_stem(config) -> nn.Module:
    if config.stem == "none":
        return NoStem()
    if config.stem not in STEMS:
        raise ValueError(f"stem {config.stem!r}: choose one of {sorted(STEMS)} or none")
    return STEMS[config.stem](config)
