"""The speech models' input as transformers feature extractors: waveform -> log-mel frames (B, T, n_mels).

`SuiteFeatureExtractor`, the suite's own: torchaudio's MelSpectrogram (Hann window, centred frames, power spectrum,
HTK mel scale), the log with a floor, then global CMVN: each mel bin minus the training set's mean, over its standard
deviation. `SuiteWhisperFeatureExtractor`, under `model.pretrained=<Whisper>`: transformers' WhisperFeatureExtractor
with the checkpoint's settings, its frames laid out and padded as the suite's models read them. Either is saved in the
run folder's preprocessor_config.json, and `save_pretrained` copies this file beside it (auto_map), so
`AutoFeatureExtractor.from_pretrained(run_dir, trust_remote_code=True)` and the audio pipelines compute the very input
the model was trained on where the suite is not installed. Like the model files, it imports only numpy, torch,
torchaudio and transformers.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from transformers import BatchFeature, SequenceFeatureExtractor, WhisperFeatureExtractor


@lru_cache(maxsize=8)
def mel_transform(rate: int, n_fft: int, win: int, hop: int, n_mels: int) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(rate, n_fft=n_fft, win_length=win, hop_length=hop, n_mels=n_mels)


class Frames:
    """What both extractors share: one waveform or a batch of them -> `input_features` (B, T, n_mels), each input's
    `features` padded to the longest with `padding_value`, and `attention_mask` (B, T) over the frames."""

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """(N,) samples at `sampling_rate` -> (T, n_mels) frames: what the model reads."""
        raise NotImplementedError

    def __call__(self, raw_speech, sampling_rate: int | None = None, return_tensors=None,
                 return_attention_mask: bool | None = None, **kwargs) -> BatchFeature:
        """One waveform (1-D array, tensor or list of floats) or a list of them; resampled from `sampling_rate` if
        that differs from the model's. Other keywords (a pipeline's `padding`, `truncation`) are ignored: the frames
        are always padded to the longest input."""
        if isinstance(raw_speech, (np.ndarray, torch.Tensor)):
            waves = list(raw_speech) if raw_speech.ndim == 2 else [raw_speech]  # (B, N) is a batch
        else:  # a list of waveforms, or one as a list of floats
            waves = list(raw_speech) if raw_speech and hasattr(raw_speech[0], "__len__") else [raw_speech]
        waves = [torch.tensor(np.asarray(w, dtype=np.float32)) for w in waves]  # a copy: the input may be read-only
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            waves = [torchaudio.functional.resample(w, sampling_rate, self.sampling_rate) for w in waves]
        feats = [self.features(w) for w in waves]
        longest = max(len(f) for f in feats)
        batch = np.full((len(feats), longest, self.feature_size), self.padding_value, dtype=np.float32)
        mask = np.zeros((len(feats), longest), dtype=np.int32)
        for i, f in enumerate(feats):
            batch[i, : len(f)], mask[i, : len(f)] = f.numpy(), 1
        data = {"input_features": batch}
        if return_attention_mask if return_attention_mask is not None else self.return_attention_mask:
            data["attention_mask"] = mask
        return BatchFeature(data, tensor_type=return_tensors)


class SuiteFeatureExtractor(Frames, SequenceFeatureExtractor):
    """Mono waveforms at `sampling_rate` -> `input_features` (B, T, n_mels) and `attention_mask` (B, T) over frames.
    Padded with 0, the normalised mean.

    `edge_pause` seconds of silence go before and after every input (the training clips were trimmed to the speech),
    and an input shorter than `min_frames` frames is padded with silence to that length (the stem's receptive field).
    """

    model_input_names = ["input_features", "attention_mask"]
    _auto_class = "AutoFeatureExtractor"  # save_pretrained writes the auto_map and copies this file

    def __init__(self, feature_size: int = 40, sampling_rate: int = 8000, win_ms: float = 25.0, hop_ms: float = 10.0,
                 edge_pause: float = 0.0, min_frames: int = 1, mean: list[float] | None = None,
                 std: list[float] | None = None, padding_value: float = 0.0, return_attention_mask: bool = True,
                 **kwargs):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value,
                         return_attention_mask=return_attention_mask, **kwargs)
        self.win_ms, self.hop_ms, self.edge_pause, self.min_frames = win_ms, hop_ms, edge_pause, min_frames
        self.mean = [float(m) for m in mean] if mean is not None else [0.0] * feature_size
        self.std = [float(s) for s in std] if std is not None else [1.0] * feature_size

    @property
    def hop_length(self) -> int:
        """Samples between frames."""
        return round(self.hop_ms * self.sampling_rate / 1000)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(N,) float samples -> (T, n_mels) log-mel frames, before normalisation."""
        win, hop = round(self.win_ms * self.sampling_rate / 1000), self.hop_length
        edge = round(self.edge_pause * self.sampling_rate)
        wave = F.pad(wave.float(), (edge, edge))
        shortest = (self.min_frames - 1) * hop  # centred frames: N samples give 1 + N // hop of them
        if len(wave) < shortest:
            wave = F.pad(wave, (0, shortest - len(wave)))
        mel = mel_transform(self.sampling_rate, 1 << (win - 1).bit_length(), win, hop, self.feature_size)
        return torch.log(mel(wave) + 1e-6).T  # the floor keeps digital silence finite

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """(N,) samples at `sampling_rate` -> (T, n_mels) normalised frames: what the model reads."""
        return (self.log_mel(wave) - torch.tensor(self.mean)) / torch.tensor(self.std)

    def fit(self, waves: list[torch.Tensor]) -> None:
        """Set the per-bin mean and standard deviation (global CMVN) from every frame of `waves`."""
        frames = torch.cat([self.log_mel(w) for w in waves])
        self.mean, self.std = frames.mean(0).tolist(), frames.std(0).clamp_min(1e-3).tolist()


class SuiteWhisperFeatureExtractor(Frames, WhisperFeatureExtractor):
    """Whisper's log-mel frames for the suite's fine-tune of its encoder: transformers' WhisperFeatureExtractor with
    a checkpoint's settings (mel bins, rate, n_fft, hop; log10, floored 8 below the input's peak, (x + 4) / 4).

    Whisper reads every input padded with silence to `chunk_length` (30) seconds, and its encoder attends to all of
    it. Here each input gets exactly the frames Whisper computes for it in that window, cut to the input's own
    ceil(N / hop) frames (those its attention mask marks), and a batch is padded to its longest input with
    `padding_value`: the suite's encoder masks the padding and takes the first T rows of the position table, so an
    FSDD digit (half a second, 0.2 s of edge pause) costs ~70 frames instead of 3,000 on a CPU. Inputs longer than
    `chunk_length` seconds are cut, as Whisper cuts them. `edge_pause` seconds of silence go before and after every
    input, as in SuiteFeatureExtractor.
    """

    model_input_names = ["input_features", "attention_mask"]
    _auto_class = "AutoFeatureExtractor"

    def __init__(self, edge_pause: float = 0.0, return_attention_mask: bool = True, **kwargs):
        super().__init__(return_attention_mask=return_attention_mask, **kwargs)
        self.edge_pause = edge_pause

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """(N,) samples at `sampling_rate` -> (T, n_mels): Whisper's frames of the input in its padded window."""
        edge = round(self.edge_pause * self.sampling_rate)
        wave = F.pad(wave.float(), (edge, edge))[: self.n_samples]
        frames = max(1, -(-len(wave) // self.hop_length))
        # silence after the input, as in the 30-s window: enough that each of its frames' windows (n_fft wide,
        # centred) ends in silence rather than in the reflection that pads the end of the STFT
        window = len(wave) + self.n_fft // 2 + self.hop_length
        out = WhisperFeatureExtractor.__call__(self, wave.numpy(), sampling_rate=self.sampling_rate,
                                               padding="max_length", max_length=window, return_tensors="pt")
        return out["input_features"][0, :, :frames].T  # (n_mels, frames) -> (T, n_mels)
