"""The shared core against the paper's definitions: each test can fail if the core gets a detail wrong."""

import pytest
import torch

from core.transformer import (
    CrossAttention,
    Decoder,
    Encoder,
    EncoderDecoder,
    KVCache,
    RotaryEmbedding,
    SelfAttention,
    TransformerConfig,
    attend,
    reference_attention,
)

VARIANTS = [dict(position=p, norm_first=n) for p in ("sinusoidal", "learned", "rope") for n in (True, False)]


def cfg(**kw) -> TransformerConfig:
    base = dict(d_model=32, n_heads=4, d_ff=64, n_layers=2, n_decoder_layers=2, dropout=0.0, max_len=64)
    return TransformerConfig(**{**base, **kw})


def test_reference_attention_is_the_papers_formula():
    q, k, v = torch.randn(2, 3, 5, 8, dtype=torch.float64), torch.randn(2, 3, 7, 8, dtype=torch.float64), \
        torch.randn(2, 3, 7, 8, dtype=torch.float64)
    by_hand = torch.empty(2, 3, 5, 8, dtype=torch.float64)
    for b in range(2):
        for h in range(3):
            scores = q[b, h] @ k[b, h].T / 8**0.5
            weights = torch.exp(scores) / torch.exp(scores).sum(-1, keepdim=True)
            by_hand[b, h] = weights @ v[b, h]
    torch.testing.assert_close(reference_attention(q, k, v), by_hand)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])  # the fused kernel and the CPU bf16 path
def test_attend_matches_reference_with_padding_and_causal_masks(dtype):
    q, k, v = (torch.randn(2, 4, 6, 16, dtype=torch.float64) for _ in range(3))
    pad = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])[:, None, None, :]
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    tol = dict(atol=3e-2, rtol=3e-2) if dtype == torch.bfloat16 else {}
    ql, kl, vl = q.to(dtype), k.to(dtype), v.to(dtype)
    torch.testing.assert_close(attend(ql, kl, vl, pad).double(), reference_attention(q, k, v, pad), **tol)
    torch.testing.assert_close(attend(ql, kl, vl, causal=True).double(), reference_attention(q, k, v, causal), **tol)


def test_self_attention_module_is_multi_head_attention_by_hand():
    torch.manual_seed(0)
    attn = SelfAttention(cfg()).double()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    Wq, Wk, Wv = attn.qkv.weight.split(32)
    bq, bk, bv = attn.qkv.bias.split(32)
    heads = []
    for h in range(4):  # head h uses its own 8-wide slice of the projections
        s = slice(8 * h, 8 * h + 8)
        q, k, v = x @ Wq[s].T + bq[s], x @ Wk[s].T + bk[s], x @ Wv[s].T + bv[s]
        heads.append(torch.softmax(q @ k.transpose(1, 2) / 8**0.5, -1) @ v)
    expected = torch.cat(heads, -1) @ attn.out.weight.T + attn.out.bias  # Concat(head_1..head_h) W^O
    torch.testing.assert_close(attn(x), expected)


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_padding_never_changes_real_positions(variant):
    torch.manual_seed(0)
    enc = Encoder(cfg(**variant)).eval()
    x = torch.randn(1, 5, 32)
    padded = torch.cat([x, torch.randn(1, 3, 32) * 100], dim=1)  # garbage in the padding
    mask = torch.tensor([[True] * 5 + [False] * 3])
    torch.testing.assert_close(enc(padded, mask)[:, :5], enc(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_causal_mask_hides_the_future(variant):
    torch.manual_seed(0)
    model = EncoderDecoder(cfg(**variant)).eval()
    src, tgt = torch.randn(2, 7, 32), torch.randn(2, 6, 32)
    changed = tgt.clone()
    changed[:, 4:] = torch.randn(2, 2, 32)  # rewrite the last two target steps
    a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])  # the later steps do see their own input


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_cached_decoding_equals_recomputing_the_prefix(variant):
    torch.manual_seed(0)
    c = cfg(**variant)
    enc, dec = Encoder(c).eval(), Decoder(c).eval()
    src, tgt = torch.randn(3, 7, 32), torch.randn(3, 6, 32)
    src_mask = torch.tensor([[True] * 7, [True] * 5 + [False] * 2, [True] * 3 + [False] * 4])
    memory = enc(src, src_mask)
    full = dec(tgt, memory, src_mask)
    cache, memory_kv = dec.init_cache(3, 16, src.device, src.dtype), dec.memory_kv(memory)
    prompt = dec(tgt[:, :2], memory_kv=memory_kv, memory_padding_mask=src_mask, cache=cache)  # a 2-step prompt
    steps = [dec(tgt[:, t : t + 1], memory_kv=memory_kv, memory_padding_mask=src_mask, cache=cache)
             for t in range(2, 6)]
    torch.testing.assert_close(torch.cat([prompt, *steps], 1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_reorder_and_overflow():
    cache = KVCache(batch=3, heads=1, max_len=2, head_dim=1, device="cpu", dtype=torch.float32)
    cache.append(torch.arange(3.0).view(3, 1, 1, 1), torch.arange(3.0).view(3, 1, 1, 1))
    cache.reorder(torch.tensor([2, 2, 0]))
    k, _ = cache.append(torch.zeros(3, 1, 1, 1), torch.zeros(3, 1, 1, 1))
    assert k[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="holds 2 steps"):
        cache.append(torch.zeros(3, 1, 1, 1), torch.zeros(3, 1, 1, 1))


def test_rotary_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(head_dim=8, max_len=64)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):
        return (rope(q, offset=m) * rope(k, offset=n)).sum()

    torch.testing.assert_close(score(3, 1), score(13, 11), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(score(0, 7), score(20, 27), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2))


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_every_parameter_gets_a_gradient(variant):
    torch.manual_seed(0)
    model = EncoderDecoder(cfg(**variant))
    src_mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    model(torch.randn(2, 7, 32), torch.randn(2, 5, 32), src_mask).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_cross_attention_ignores_padded_memory():
    torch.manual_seed(0)
    attn = CrossAttention(cfg()).eval()
    x, memory = torch.randn(1, 3, 32), torch.randn(1, 4, 32)
    padded = torch.cat([memory, torch.randn(1, 2, 32)], 1)
    mask = torch.tensor([[True] * 4 + [False] * 2])[:, None, None, :]
    torch.testing.assert_close(attn(x, attn.memory_kv(padded), mask), attn(x, attn.memory_kv(memory)))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="position"):
        TransformerConfig(position="alibi")


def test_decoder_ignores_padded_memory():
    torch.manual_seed(0)
    dec = Decoder(cfg()).eval()
    tgt, memory = torch.randn(1, 3, 32), torch.randn(1, 4, 32)
    padded = torch.cat([memory, torch.randn(1, 2, 32) * 100], 1)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    torch.testing.assert_close(dec(tgt, padded, mask), dec(tgt, memory), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [True, False])
def test_norm_placement(norm_first):
    """Post-norm (the paper) ends every sublayer with LayerNorm; pre-norm leaves the residual stream unnormalised."""
    from core.transformer import EncoderLayer

    torch.manual_seed(0)
    layer = EncoderLayer(cfg(norm_first=norm_first)).eval()
    y = layer(torch.randn(2, 5, 32) * 3 + 1)
    normalised = torch.allclose(y.mean(-1), torch.zeros(2, 5), atol=1e-5) and \
        torch.allclose(y.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3)
    assert normalised == (not norm_first)
