"""The shared Transformer of "Attention Is All You Need" (Vaswani et al., 2017), written to be read.

Every task in the suite is stem -> this encoder (and decoder) -> head. Classes go from the leaves up:
attention -> feed-forward -> positions -> layers -> Encoder / Decoder -> EncoderDecoder.

Shapes:  B batch, S source length, T target length, D model dim, H heads, Dh = D // H head dim.
Masks:   a padding mask is bool (B, S), True at real tokens; attention masks passed to SDPA are bool and
         broadcast to (B, H, T, S), True where attention is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TransformerConfig:
    """Hyper-parameters of the shared core; `conf/model/*.yaml` maps onto it. The defaults are the suite's own
    (pre-norm, GELU); the options after `bias` exist so that published checkpoints (BERT, ViT, Marian, BART, Whisper)
    load into this same code: `core/checkpoints.py` sets them from a checkpoint's config."""

    d_model: int = 256  # width of every residual stream vector
    n_heads: int = 4  # attention heads; d_model must divide by it
    d_ff: int = 1024  # hidden width of the position-wise feed-forward network
    n_layers: int = 4  # encoder layers
    n_decoder_layers: int = 4  # decoder layers (only built by tasks that decode)
    dropout: float = 0.1  # dropout on embeddings and on every sublayer output before the residual add
    attn_dropout: float = 0.0  # dropout on attention probabilities; >0 forces the slow math kernel on CPU
    activation: str = "gelu"  # "relu" (the paper), "gelu" (BERT, ViT, BART, Whisper) or "silu" (Marian's swish)
    norm_first: bool = True  # pre-norm (stable from scratch) or post-norm (the paper)
    position: str = "sinusoidal"  # "sinusoidal" (the paper), "learned", "rope" or "none" (the stem adds its own)
    max_len: int = 1024  # longest sequence the position tables cover
    rope_base: float = 10000.0  # rotary frequency base
    norm_eps: float = 1e-5  # LayerNorm epsilon (BERT and ViT checkpoints use 1e-12)
    bias: bool = True  # biases in linear layers
    causal: bool = False  # the encoder attends only to earlier positions (a decoder-only model)
    sinusoid_layout: str = "interleaved"  # sine/cosine of each frequency side by side (the paper, tensor2tensor's
    #                                       layout in most code) or "halves": all sines, then all cosines (Marian)
    position_offset: int = 0  # learned positions start at this row of the table (BART reserves 2 rows)
    embed_norm: bool = False  # LayerNorm on the embeddings after the positions are added (BERT, BART)

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "d_ff", "n_layers", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)}: give a positive integer")
        if self.n_decoder_layers < 0 or self.position_offset < 0:
            raise ValueError("model.n_decoder_layers and model.position_offset must be >= 0")
        for name in ("dropout", "attn_dropout"):
            if not 0 <= getattr(self, name) < 1:  # also false for NaN
                raise ValueError(f"model.{name}={getattr(self, name)}: give a probability in [0, 1)")
        if not (self.norm_eps > 0 and self.rope_base > 0):
            raise ValueError(f"model.norm_eps={self.norm_eps} and model.rope_base={self.rope_base} must be > 0")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
        for name, allowed in (("position", POSITIONS), ("activation", ACTIVATIONS), ("sinusoid_layout", LAYOUTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name}={getattr(self, name)!r}: choose one of {sorted(allowed)}")


# ----------------------------------------------------------------------------------------------------------------
# Attention


def merge_masks(T: int, S: int, mask: torch.Tensor | None, causal: bool) -> torch.Tensor | None:
    """One boolean mask, True where a query may attend: `mask` (broadcasting to (B, H, T, S)) and, when `causal`,
    no key after the query's own position (the last T of the S keys are the queries' own steps)."""
    if not causal:
        return mask
    future = torch.ones(T, S, dtype=torch.bool, device=mask.device if mask is not None else None).tril(S - T)
    return future if mask is None else mask & future


def attention_probs(q, k, mask=None, causal=False) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)) after the masks: (B, H, T, S), the softmax in at least float32.

    The reference below, `record_attention` and the CPU bfloat16 path of `attend` all compute it here."""
    scores = (q * q.size(-1) ** -0.5) @ k.transpose(-2, -1)  # (B, H, T, S)
    mask = merge_masks(*scores.shape[-2:], mask, causal)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1, dtype=torch.promote_types(q.dtype, torch.float32))


def reference_attention(q, k, v, mask=None):
    """softmax(Q K^T / sqrt(d_k)) V, exactly as in the paper; the tests hold the fast path to it."""
    return attention_probs(q, k, mask).to(v.dtype) @ v  # (B, H, T, Dh)


@dataclass
class AttentionRecord:
    """The probabilities of one attention call, kept by `record_attention`."""

    kind: str  # "self" (SelfAttention) or "cross" (CrossAttention: decoder queries over the encoder output)
    probs: torch.Tensor  # (B, H, T, S) float32 softmax(QK^T / sqrt(Dh)) after masks; each row sums to 1


_recorded: list[AttentionRecord] | None = None  # set only inside `record_attention()`


@contextmanager
def record_attention() -> Iterator[list[AttentionRecord]]:
    """Inside this block every `attend` call also appends its probabilities to the yielded list, in call order.

    The fused kernel never materialises them, so they are recomputed by the explicit formula (masks, causality and
    rotary positions are all applied before `attend`, so they hold here too). Outside the block: one `is None` test.
    """
    global _recorded
    outer, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = outer


def attend(q, k, v, mask=None, causal=False, dropout=0.0, kind="self"):
    """Scaled dot-product attention of q (B, H, T, Dh) over k, v (B, H, S, Dh); mask broadcasts to (B, H, T, S).

    PyTorch's fused kernel (`F.scaled_dot_product_attention`) everywhere except bfloat16/float16 on the CPU, where
    its backward pass is slower than the same maths as three plain matmuls (1.6x here: bench/attention_cpu.py).
    `kind` only tags what `record_attention` keeps.
    """
    if _recorded is not None:
        _recorded.append(AttentionRecord(kind, attention_probs(q, k, mask, causal).float().detach()))
    if q.device.type != "cpu" or q.dtype == torch.float32:
        if causal and mask is not None:  # the fused kernel takes one or the other
            mask, causal = merge_masks(q.size(-2), k.size(-2), mask, True), False
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
    probs = attention_probs(q, k, mask, causal).to(q.dtype)
    return F.dropout(probs, dropout, training=dropout > 0) @ v  # (B, H, T, Dh)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al., 2021): rotate query/key pairs by an angle proportional to position,
    so q.k depends only on the distance between the two positions."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self.register_buffer("cos", torch.empty(max_len, head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(max_len, head_dim // 2), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fill the cos/sin tables (they are not saved with the weights: a loaded model rebuilds them here)."""
        inv_freq = 1.0 / self.base ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim)  # (Dh/2,)
        angles = torch.outer(torch.arange(len(self.cos)).float(), inv_freq).to(self.cos.device)  # (L, Dh/2)
        with torch.no_grad():
            self.cos.copy_(angles.cos())
            self.sin.copy_(angles.sin())

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Rotate x (B, H, T, Dh) as if its first position were `offset`."""
        T = x.size(-2)
        cos = self.cos[offset : offset + T].to(x.dtype)  # (T, Dh/2)
        sin = self.sin[offset : offset + T].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]  # the two halves of each rotated pair
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class KVCache:
    """Keys and values of one self-attention layer, preallocated for `max_len` steps so decoding appends in place.

    Any object with `length` and `append(k, v)` serves as a layer's cache (transformers' caches, through an adapter
    in core/seq2seq.py)."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, device, dtype):
        self.k = torch.empty(batch, heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, Dh) after the cached steps; return all keys and values so far."""
        T = k.size(2)
        if self.length + T > self.k.size(2):
            raise ValueError(f"KV cache holds {self.k.size(2)} steps; cannot append {T} after {self.length}")
        self.k[:, :, self.length : self.length + T] = k
        self.v[:, :, self.length : self.length + T] = v
        self.length += T
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search re-ranks hypotheses every step)."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)


class Linear(nn.Linear):
    """A linear layer of the paper, initialised as the reference implementations do: Xavier-uniform weights, zero
    biases. Every module initialises itself in `reset_parameters` (PyTorch's convention, which transformers' loading
    calls again on whatever a checkpoint does not hold)."""

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class SelfAttention(nn.Module):
    """Multi-head self-attention: Q, K and V are projections of the same sequence (fused into one matmul)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)  # W^Q, W^K, W^V side by side
        self.out = Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)  # W^O
        self.attn_dropout = cfg.attn_dropout

    def forward(self, x, mask=None, causal=False, rope=None, cache: KVCache | None = None):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x (B,H,T,Dh)
        offset = cache.length if cache is not None else 0
        if rope is not None:
            q, k = rope(q, offset), rope(k, offset)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H, offset + T, Dh)
            if causal and T == 1:  # a single new step may see every cached step
                causal = False
        dropout = self.attn_dropout if self.training else 0.0
        y = attend(q, k, v, mask, causal, dropout)  # (B, H, T, Dh)
        return self.out(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D): heads concatenated


class CrossAttention(nn.Module):
    """Multi-head attention from the decoder (queries) to the encoder output (keys and values)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q = Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.kv = Linear(cfg.d_model, 2 * cfg.d_model, bias=cfg.bias)
        self.out = Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.attn_dropout = cfg.attn_dropout

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project the encoder output once; decoding reuses it at every step."""
        B, S, D = memory.shape
        k, v = self.kv(memory).view(B, S, 2, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        return k, v  # 2 x (B, H, S, Dh)

    def forward(self, x, memory_kv, memory_mask=None):
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, T, Dh)
        k, v = memory_kv
        dropout = self.attn_dropout if self.training else 0.0
        y = attend(q, k, v, memory_mask, dropout=dropout, kind="cross")  # (B, H, T, Dh)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward and positions

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class FeedForward(nn.Module):
    """FFN(x) = act(x W1 + b1) W2 + b2, applied to every position separately."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.up = Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.activation]()
        self.down = Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


LAYOUTS = ("interleaved", "halves")


def sinusoidal_table(length: int, dim: int, layout: str = "interleaved") -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(pos / 10000^(2i/D)); (length, dim).

    `halves` puts the same values as [all sines | all cosines] (Marian's checkpoints expect that order)."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]  # float64: far positions as exact as Marian's table
    angles = pos * torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    if layout == "halves":
        return torch.cat([angles.sin(), angles.cos()], dim=1).float()
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles.cos()
    return table.float()


class SinusoidalPositions(nn.Module):
    """The paper's fixed positional encoding, added to the embeddings."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.layout = cfg.sinusoid_layout
        self.register_buffer("table", torch.empty(cfg.max_len, cfg.d_model), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fill the table (it is not saved with the weights: a loaded model rebuilds it here)."""
        with torch.no_grad():
            self.table.copy_(sinusoidal_table(*self.table.shape, self.layout).to(self.table.device))

    def forward(self, x, offset: int = 0):
        return x + self.table[offset : offset + x.size(1)].to(x.dtype)


class LearnedPositions(nn.Module):
    """One trained vector per position (BERT, GPT, ViT); the first `position_offset` rows are never used (BART)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.offset = cfg.position_offset
        self.table = nn.Parameter(torch.empty(cfg.max_len + cfg.position_offset, cfg.d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.table, std=0.02)

    def forward(self, x, offset: int = 0):
        start = self.offset + offset
        return x + self.table[start : start + x.size(1)].to(x.dtype)


class NoPositions(nn.Module):
    """Positions are the stem's business (ViT's 2-D table) or live in attention (rotary)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()

    def forward(self, x, offset: int = 0):
        return x


POSITIONS = {"sinusoidal": SinusoidalPositions, "learned": LearnedPositions, "rope": NoPositions,
             "none": NoPositions}


def make_rope(cfg: TransformerConfig) -> RotaryEmbedding | None:
    return RotaryEmbedding(cfg.d_model // cfg.n_heads, cfg.max_len, cfg.rope_base) if cfg.position == "rope" else None


# ----------------------------------------------------------------------------------------------------------------
# Layers


def residual(x, sublayer, norm: nn.LayerNorm, drop: nn.Dropout, norm_first: bool):
    """Pre-norm: x + Sublayer(LN(x)).  Post-norm (the paper): LN(x + Sublayer(x))."""
    if norm_first:
        return x + drop(sublayer(norm(x)))
    return norm(x + drop(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each wrapped in a residual connection with layer normalisation."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn, self.ff = SelfAttention(cfg), FeedForward(cfg)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.norm_first = cfg.norm_first

    def forward(self, x, mask=None, rope=None, causal=False):
        x = residual(x, lambda h: self.attn(h, mask=mask, causal=causal, rope=rope), self.norm1, self.drop,
                     self.norm_first)
        return residual(x, self.ff, self.norm2, self.drop, self.norm_first)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, feed-forward; each a residual sublayer."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn, self.cross_attn, self.ff = SelfAttention(cfg), CrossAttention(cfg), FeedForward(cfg)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) for _ in range(3))
        self.drop = nn.Dropout(cfg.dropout)
        self.norm_first = cfg.norm_first

    def forward(self, x, memory_kv, memory_mask=None, rope=None, cache: KVCache | None = None):
        def self_attend(h):
            return self.self_attn(h, causal=True, rope=rope, cache=cache)

        x = residual(x, self_attend, self.norm1, self.drop, self.norm_first)
        x = residual(x, lambda h: self.cross_attn(h, memory_kv, memory_mask), self.norm2, self.drop, self.norm_first)
        return residual(x, self.ff, self.norm3, self.drop, self.norm_first)


# ----------------------------------------------------------------------------------------------------------------
# Stacks


def padding_to_attention_mask(padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) True-at-real-tokens -> (B, 1, 1, S), broadcast over heads and queries."""
    return None if padding_mask is None else padding_mask[:, None, None, :]


class Embedder(nn.Module):
    """What both stacks do to their input first: add positions, then LayerNorm (BERT, BART) and dropout."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.positions = POSITIONS[cfg.position](cfg)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.embed_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, offset: int = 0):
        return self.drop(self.norm(self.positions(x, offset)))


class Encoder(nn.Module):
    """Positions, dropout, N encoder layers (and a final LayerNorm when pre-norm). Input: embedded (B, S, D).

    With `cfg.causal` every position attends only to itself and earlier ones: a decoder-only (GPT-style) stack."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.embed = Embedder(cfg)
        self.rope = make_rope(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.norm_first else nn.Identity()
        self.causal = cfg.causal

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(x)
        mask = padding_to_attention_mask(padding_mask)
        for layer in self.layers:
            x = layer(x, mask=mask, rope=self.rope, causal=self.causal)
        return self.norm(x)  # (B, S, D)


class Decoder(nn.Module):
    """Positions, dropout, N decoder layers attending to an encoder output. Input: embedded targets (B, T, D)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads, self.d_model = cfg.n_heads, cfg.d_model
        self.embed = Embedder(cfg)
        self.rope = make_rope(cfg)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.norm_first else nn.Identity()

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's cross-attention keys and values of the encoder output, computed once per source."""
        return [layer.cross_attn.memory_kv(memory) for layer in self.layers]

    def init_cache(self, batch: int, max_len: int, device, dtype) -> list[KVCache]:
        """Empty per-layer caches for incremental decoding of up to `max_len` target steps."""
        H = self.n_heads
        return [KVCache(batch, H, max_len, self.d_model // H, device, dtype) for _ in self.layers]

    def forward(self, x, memory=None, memory_padding_mask=None, memory_kv=None, cache: list[KVCache] | None = None):
        """Decode embedded targets x (B, T, D). With `cache`, x holds only the new steps."""
        if memory_kv is None:
            memory_kv = self.memory_kv(memory)
        offset = cache[0].length if cache is not None else 0
        x = self.embed(x, offset)
        mask = padding_to_attention_mask(memory_padding_mask)
        for i, layer in enumerate(self.layers):
            x = layer(x, memory_kv[i], mask, rope=self.rope, cache=None if cache is None else cache[i])
        return self.norm(x)  # (B, T, D)


class EncoderDecoder(nn.Module):
    """The full Transformer: encode the source once, decode the target attending to it."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)

    def forward(self, src, tgt, src_padding_mask=None):
        memory = self.encoder(src, src_padding_mask)
        return self.decoder(tgt, memory, src_padding_mask)
