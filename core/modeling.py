"""The suite's models as transformers models: one config class, one `PreTrainedModel` base and the base model.

A task model is stem -> the shared core (`transformer.py`) -> head. The stems are in `stems.py`; the heads in
`heads.py` (sequence, image and audio classification, CTC), `tagging.py` (token classification), `seq2seq.py`
(sequence-to-sequence LM) and `forecaster.py` (time series). Importing the `core` package registers all of them
with transformers' Auto classes (`core/__init__.py`).

These files import only torch, transformers and each other (relative imports), so `save_pretrained` copies them
into a run folder and `from_pretrained(folder, trust_remote_code=True)` loads it where the suite is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .stems import make_stem
from .transformer import Encoder, TransformerConfig


class SuiteConfig(PreTrainedConfig):
    """Every suite model's config.json: the core's fields (`TransformerConfig`, the `model` group), then the stem's
    and the head's. A field a stem or head does not use keeps its default."""

    model_type = "transformer_suite"
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_heads", "num_hidden_layers": "n_layers",
                     "intermediate_size": "d_ff"}

    # -- the core (core/transformer.py TransformerConfig, field by field) ----------------------------------------
    d_model: int = 256  # width of every residual stream vector
    n_heads: int = 4  # attention heads
    d_ff: int = 1024  # feed-forward hidden width
    n_layers: int = 4  # encoder layers
    n_decoder_layers: int = 4  # decoder layers (sequence-to-sequence heads only)
    dropout: float = 0.1  # on embeddings and sublayer outputs
    attn_dropout: float = 0.0  # on attention probabilities
    activation: str = "gelu"  # relu | gelu | silu
    norm_first: bool = True  # pre-norm (True) or the paper's post-norm
    position: str = "sinusoidal"  # sinusoidal | learned | rope | none
    max_len: int = 1024  # longest sequence the position tables cover
    rope_base: float = 10000.0  # rotary frequency base
    norm_eps: float = 1e-5  # LayerNorm epsilon
    bias: bool = True  # biases in linear layers
    causal: bool = False  # the encoder attends only to earlier positions
    sinusoid_layout: str = "interleaved"  # interleaved (the paper) | halves (Marian)
    position_offset: int = 0  # first row of the learned position table that is used (BART: 2)
    embed_norm: bool = False  # LayerNorm on the embeddings after the positions (BERT, BART)

    # -- the stem: what turns the input into (B, S, D) vectors (core/stems.py) -----------------------------------
    stem: str = "text"  # text (token ids) | image (pixels) | audio (log-mel frames) | none (the head embeds)
    vocab_size: int = 0  # text: token vocabulary; also the output vocabulary of seq2seq and CTC heads
    type_vocab_size: int = 0  # text: token-type (segment) embeddings, 0 = none (BERT has 2)
    embed_scale: bool = True  # text: multiply token embeddings by sqrt(d_model) (the paper, Marian; not BERT, BART)
    pad_token_id: int | None = None  # text: padding token (its embedding row); CTC: the blank
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    decoder_start_token_id: int | None = None  # seq2seq: the first decoder input
    char_vocab_size: int = 0  # text: characters of a per-word char-CNN (NER), 0 = none
    char_dim: int = 32  # char-CNN character embedding width
    char_filters: int = 128  # char-CNN filters
    max_word_chars: int = 20  # characters of a word the char-CNN reads
    image_size: list[int] | None = None  # image: [height, width]
    num_channels: int = 3  # image: 1 (greyscale) or 3 (RGB)
    patch_size: int = 4  # image: pixels per patch side
    image_stem: str = "patch"  # image: patch (linear embedding of each patch, ViT) | conv (Xiao et al. 2021)
    patch_position: str = "sincos2d"  # image: sincos2d (fixed 2-D) | learned (one vector per patch, ViT)
    cls_token: bool = False  # image: a learned class token before the patches
    pixel_mean: list[float] | None = None  # image: per channel, inputs in [0, 1] become (x - mean) / std;
    pixel_std: list[float] | None = None  # None: 0.5 and 0.5, i.e. [-1, 1] (the ViT checkpoints' normalisation)
    n_mels: int = 40  # audio: log-mel bins per frame
    audio_stem: str = "conv2d"  # audio: conv2d (two 3x3 stride-2 convolutions, 4x fewer frames) | conv1d (Whisper)
    stem_channels: int = 32  # audio conv2d: channels of the convolutions

    # -- the head ----------------------------------------------------------------------------------------------
    pooling: str = "mean"  # classification: mean over real positions | cls (the first position)
    classifier_dropout: float | None = None  # before the classifier; None: `dropout`
    label_smoothing: float = 0.0  # on the cross-entropy of classification and seq2seq heads
    distill_alpha: float = 0.5  # classification with teacher_probs: their weight in the loss
    distill_temperature: float = 2.0  # ... and the temperature of both sides
    zero_init_head: bool = False  # classification: start the classifier at zero (equal odds for every class)
    tag_decoder: str = "crf"  # token classification: argmax | constrained (Viterbi over legal IOB2 paths) | crf
    tie_word_embeddings: bool = True  # seq2seq: one matrix for source, target and output tokens
    final_logits_bias: bool = False  # seq2seq: a fixed bias on the output logits (Marian, BART checkpoints)
    architecture: str = "patch"  # forecasting: patch (PatchTST) | encdec (the original encoder-decoder on steps)
    lookback: int = 336  # forecasting: past steps read (L)
    horizon: int = 96  # forecasting: future steps predicted (H)
    patch_len: int = 16  # forecasting patch: steps per patch token
    patch_stride: int = 8  # forecasting patch: steps between patch starts
    label_len: int = 48  # forecasting encdec: past steps the decoder reads before the H placeholders
    head_dropout: float = 0.0  # forecasting patch: dropout before the linear head
    revin: bool = True  # forecasting: reversible instance normalisation around the network
    series_channels: list[str] | None = None  # forecasting: the input columns, in order
    target_channels: list[str] | None = None  # forecasting: the columns predicted (a subset of the inputs)
    series_mean: list[float] | None = None  # forecasting: per-channel mean of the train rows (the data scaler)
    series_std: list[float] | None = None  # forecasting: ... and their std; the model reads (x - mean) / std
    suite: dict | None = None  # provenance: task, dataset, parameters (read by people and tools, not the model)

    def __post_init__(self, **kwargs):
        if self.image_size is not None:
            self.image_size = [int(s) for s in self.image_size]
        super().__post_init__(**kwargs)

    def core(self) -> TransformerConfig:
        """The shared core's part of this config, validated by its dataclass."""
        return TransformerConfig(**{f.name: getattr(self, f.name) for f in fields(TransformerConfig)})


@dataclass
class SuiteModelOutput(ModelOutput):
    """The encoder's output and which of its positions are real (None: all of them)."""

    last_hidden_state: torch.Tensor | None = None  # (B, S, D)
    padding_mask: torch.Tensor | None = None  # (B, S) bool, True at real positions


class SuitePreTrainedModel(PreTrainedModel):
    """What every suite model shares: the config class and the core's initialisation, module by module."""

    config_class = SuiteConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["EncoderLayer", "DecoderLayer"]
    pipeline_tag: str | None = None  # the transformers pipeline (and Hub tag) for this head, where there is one

    def _init_weights(self, module: nn.Module) -> None:
        """transformers calls this on every submodule, children first, on a fresh model and on whatever a checkpoint
        does not hold (the position tables, which are never saved). Each module's own `reset_parameters` decides
        (PyTorch's convention): Xavier for the core's projections, the stems' and heads' own schemes, PyTorch's
        defaults elsewhere. transformers guards torch.nn.init here, so loaded weights are never overwritten. It
        skips modules without parameters of their own, so every scheme lives in a leaf module."""
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


class SuiteModel(SuitePreTrainedModel):
    """The stem and the shared encoder, without a head: hidden states for every position (`AutoModel`)."""

    def __init__(self, config: SuiteConfig):
        super().__init__(config)
        self.stem = make_stem(config)
        self.encoder = Encoder(config.core())
        self.post_init()

    def get_input_embeddings(self) -> nn.Module | None:
        return getattr(self.stem, "tokens", None)

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.stem.tokens = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None,
                input_features=None, **kwargs) -> SuiteModelOutput:
        """Text: input_ids (B, S) with attention_mask (B, S) 1 at real tokens and optional token_type_ids. Images:
        pixel_values (B, C, H, W) in [0, 1]. Audio: input_features (B, T, n_mels) with attention_mask (B, T)."""
        x, mask = self.stem(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            pixel_values=pixel_values, input_features=input_features, **kwargs)
        return SuiteModelOutput(last_hidden_state=self.encoder(x, mask), padding_mask=mask)
