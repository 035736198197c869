"""Decoding on the shared encoder-decoder: a tiny model learns to copy, and every decoding path agrees."""

import pytest
import torch

from core.seq2seq import GenerationConfig, Seq2SeqTransformer, constrain
from core.transformer import TransformerConfig

PAD, BOS, EOS = 0, 1, 2
PAIRS = [([5, 6, 7], [7, 6, 5]), ([8, 9], [9, 8]), ([10, 11, 12, 13], [13, 12, 11, 10]), ([6, 9, 12], [12, 9, 6])]


def batch(pairs):
    S = max(len(s) for s, _ in pairs)
    T = max(len(t) for _, t in pairs) + 1
    src = torch.tensor([s + [PAD] * (S - len(s)) for s, _ in pairs])
    labels = torch.tensor([t + [EOS] + [-100] * (T - len(t) - 1) for _, t in pairs])
    return src, (src != PAD).long(), labels


@pytest.fixture(scope="module")
def trained():
    """A tiny model overfits four reversal pairs."""
    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=64, n_heads=4, d_ff=128, n_layers=2, n_decoder_layers=2, dropout=0.0, max_len=32)
    model = Seq2SeqTransformer(cfg, vocab_size=16, pad_id=PAD, bos_id=BOS, eos_id=EOS, label_smoothing=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    src, mask, labels = batch(PAIRS)
    for _ in range(300):
        loss = model(src, mask, labels)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_tiny_model_reproduces_its_training_pairs(trained):
    src, mask, _ = batch(PAIRS)
    assert trained.generate(src, mask, GenerationConfig(max_new_tokens=8)) == [t for _, t in PAIRS]


@pytest.mark.parametrize("beams", [1, 3])
def test_cached_equals_uncached_and_beam_one_equals_greedy(trained, beams):
    src, mask, _ = batch(PAIRS)
    torch.manual_seed(1)
    noisy = torch.randint(3, 16, (6, 5))  # inputs it never saw: long, uncertain outputs
    for s, m in ((src, mask), (noisy, torch.ones_like(noisy))):
        gen = GenerationConfig(max_new_tokens=10, num_beams=beams)
        assert trained.generate(s, m, gen) == trained.generate(s, m, gen, use_cache=False)
    greedy = trained.generate(noisy, torch.ones_like(noisy), GenerationConfig(max_new_tokens=10))
    beam1 = trained.generate(noisy, torch.ones_like(noisy), GenerationConfig(max_new_tokens=10, num_beams=1))
    assert greedy == beam1


def test_beam_search_finds_the_training_pairs_too(trained):
    src, mask, _ = batch(PAIRS)
    assert trained.generate(src, mask, GenerationConfig(max_new_tokens=8, num_beams=4)) == [t for _, t in PAIRS]


def test_lengths_come_from_config(trained):
    noisy = torch.randint(3, 16, (4, 6))
    out = trained.generate(noisy, torch.ones_like(noisy), GenerationConfig(max_new_tokens=3, num_beams=2))
    assert all(len(o) <= 3 for o in out)
    long = trained.generate(noisy, torch.ones_like(noisy), GenerationConfig(max_new_tokens=12, min_new_tokens=7))
    assert all(len(o) >= 7 for o in long)


@pytest.mark.parametrize("beams", [1, 3])
def test_source_relative_cap_binds_per_input_and_only_when_reached(trained, beams):
    torch.manual_seed(0)  # an untrained model rambles: EOS is one token of 40
    cfg = TransformerConfig(d_model=32, n_heads=4, d_ff=64, n_layers=1, n_decoder_layers=1, dropout=0.0, max_len=32)
    untrained = Seq2SeqTransformer(cfg, vocab_size=40, pad_id=PAD, bos_id=BOS, eos_id=EOS).eval()
    src = torch.randint(3, 40, (4, 6))
    mask = torch.ones_like(src)
    mask[0, 2:] = mask[1, 4:] = 0  # sources of 2, 4, 6, 6 tokens
    gen = GenerationConfig(max_new_tokens=12, num_beams=beams)
    assert [len(o) for o in untrained.generate(src, mask, gen)] == [12] * 4
    capped = GenerationConfig(**{**vars(gen), "min_new_tokens": 5, "max_len_a": 1.5, "max_len_b": 1})
    out = untrained.generate(src, mask, capped)
    assert [len(o) for o in out] == [5, 7, 10, 10]  # 1.5 * source + 1, but never below min_new_tokens
    assert out == untrained.generate(src, mask, capped, use_cache=False)
    src, mask, _ = batch(PAIRS)  # the copy pairs end well inside a generous cap: the outputs do not change
    loose = GenerationConfig(max_new_tokens=8, num_beams=beams, max_len_a=2.0, max_len_b=2)
    assert trained.generate(src, mask, loose) == [t for _, t in PAIRS]


def test_no_repeat_ngram_bans_the_completing_token():
    logp = torch.zeros(1, 10)
    prefix = torch.tensor([[1, 4, 5, 6, 4]])  # "4 5" seen; ending in 4 -> 5 would repeat the bigram
    constrain(logp, prefix, step=4, gen=GenerationConfig(no_repeat_ngram_size=2), eos_id=EOS,
              limit=torch.tensor([10]))
    assert logp[0, 5] == float("-inf") and (logp[0, [0, 1, 2, 3, 4, 6, 7, 8, 9]] == 0).all()


def test_beam_search_with_cache_survives_reordering():
    """An untrained model is unsure, so beams overtake one another every step and the cache must follow them."""
    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=32, n_heads=4, d_ff=64, n_layers=1, n_decoder_layers=2, dropout=0.0, max_len=32)
    model = Seq2SeqTransformer(cfg, vocab_size=40, pad_id=PAD, bos_id=BOS, eos_id=EOS).eval()
    src = torch.randint(3, 40, (3, 6))
    gen = GenerationConfig(max_new_tokens=12, num_beams=4, no_repeat_ngram_size=2)
    assert model.generate(src, torch.ones_like(src), gen) == model.generate(src, torch.ones_like(src), gen, False)
