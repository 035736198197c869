"""The sequence-to-sequence head: a tiny model learns to copy, every decoding path agrees (transformers' generate()
with its cache, the suite's own search, with and without a cache), and it saves and reloads as a transformers model."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, EncoderDecoderCache, GenerationConfig

import core  # noqa: F401  (registers the suite's models with the Auto classes)
from core.modeling import SuiteConfig
from core.seq2seq import SuiteForConditionalGeneration, constrain, search, token_lists

PAD, BOS, EOS = 0, 1, 2
PAIRS = [([5, 6, 7], [7, 6, 5]), ([8, 9], [9, 8]), ([10, 11, 12, 13], [13, 12, 11, 10]), ([6, 9, 12], [12, 9, 6])]
IDS = {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS, "decoder_start_token_id": BOS}


def batch(pairs):
    S = max(len(s) for s, _ in pairs)
    T = max(len(t) for _, t in pairs) + 1
    src = torch.tensor([s + [PAD] * (S - len(s)) for s, _ in pairs])
    labels = torch.tensor([t + [EOS] + [-100] * (T - len(t) - 1) for _, t in pairs])
    return src, (src != PAD).long(), labels


def tiny(vocab_size=16, **fields) -> SuiteForConditionalGeneration:
    sizes = {"d_model": 64, "n_heads": 4, "d_ff": 128, "n_layers": 2, "n_decoder_layers": 2, "dropout": 0.0,
             "max_len": 32, **fields}
    return SuiteForConditionalGeneration(SuiteConfig(vocab_size=vocab_size, **IDS, **sizes))


def settings(**kw) -> GenerationConfig:
    return GenerationConfig(**kw, **{k: v for k, v in IDS.items() if k != "bos_token_id"})


def decode(model, src, mask, gen: GenerationConfig, use_cache: bool = True) -> list[list[int]]:
    """transformers' generate() on the suite's model, as token ids without start/EOS/padding."""
    return token_lists(model.generate(input_ids=src, attention_mask=mask, generation_config=gen,
                                      use_cache=use_cache), EOS, PAD)


@pytest.fixture(scope="module")
def trained():
    """A tiny model overfits four reversal pairs."""
    torch.manual_seed(0)
    model = tiny(label_smoothing=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    src, mask, labels = batch(PAIRS)
    for _ in range(300):
        loss = model(input_ids=src, attention_mask=mask, labels=labels)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def untrained(n_decoder_layers=1, seed=0) -> SuiteForConditionalGeneration:
    """An untrained model rambles: EOS is one token of 40, and beams overtake one another every step."""
    torch.manual_seed(seed)
    return tiny(40, d_model=32, d_ff=64, n_layers=1, n_decoder_layers=n_decoder_layers).eval()


def test_tiny_model_reproduces_its_training_pairs(trained):
    src, mask, _ = batch(PAIRS)
    assert decode(trained, src, mask, settings(max_new_tokens=8)) == [t for _, t in PAIRS]
    assert search(trained, src, mask, settings(max_new_tokens=8)) == [t for _, t in PAIRS]


def test_the_output_matrix_is_the_embedding_and_labels_shift_behind_the_start_token(trained):
    assert trained.lm_head.weight is trained.shared.tokens.weight
    _, _, labels = batch(PAIRS)
    shifted = trained.shift_right(labels)
    assert (shifted[:, 0] == BOS).all()
    assert torch.equal(shifted[:, 1:], labels[:, :-1].masked_fill(labels[:, :-1] == -100, PAD))


@pytest.mark.parametrize("beams", [1, 3])
def test_cached_equals_uncached_and_beam_one_equals_greedy(trained, beams):
    src, mask, _ = batch(PAIRS)
    torch.manual_seed(1)
    noisy = torch.randint(3, 16, (6, 5))  # inputs it never saw: long, uncertain outputs
    for s, m in ((src, mask), (noisy, torch.ones_like(noisy))):
        gen = settings(max_new_tokens=10, num_beams=beams)
        assert decode(trained, s, m, gen) == decode(trained, s, m, gen, use_cache=False)
        assert search(trained, s, m, gen) == search(trained, s, m, gen, use_cache=False)
    greedy = decode(trained, noisy, torch.ones_like(noisy), settings(max_new_tokens=10))
    beam1 = decode(trained, noisy, torch.ones_like(noisy), settings(max_new_tokens=10, num_beams=1))
    assert greedy == beam1


def test_beam_search_finds_the_training_pairs_too(trained):
    src, mask, _ = batch(PAIRS)
    assert decode(trained, src, mask, settings(max_new_tokens=8, num_beams=4)) == [t for _, t in PAIRS]


def test_lengths_come_from_config(trained):
    noisy = torch.randint(3, 16, (4, 6))
    out = decode(trained, noisy, torch.ones_like(noisy), settings(max_new_tokens=3, num_beams=2))
    assert all(len(o) <= 3 for o in out)
    long = decode(trained, noisy, torch.ones_like(noisy), settings(max_new_tokens=12, min_new_tokens=7))
    assert all(len(o) >= 7 for o in long)


@pytest.mark.parametrize("beams", [1, 3])
def test_source_relative_cap_binds_per_input_and_only_when_reached(trained, beams):
    model = untrained()
    src = torch.randint(3, 40, (4, 6))
    mask = torch.ones_like(src)
    mask[0, 2:] = mask[1, 4:] = 0  # sources of 2, 4, 6, 6 tokens
    gen = settings(max_new_tokens=12, num_beams=beams)
    assert [len(o) for o in decode(model, src, mask, gen)] == [12] * 4
    capped = settings(max_new_tokens=12, num_beams=beams, min_new_tokens=5, max_len_a=1.5, max_len_b=1)
    out = decode(model, src, mask, capped)
    assert [len(o) for o in out] == [5, 7, 10, 10]  # 1.5 * source + 1, but never below min_new_tokens
    assert out == decode(model, src, mask, capped, use_cache=False) == search(model, src, mask, capped)
    direct = model.generate(input_ids=src, attention_mask=mask, generation_config=gen, max_len_a=1.5, max_len_b=1,
                            min_new_tokens=5)  # the cap's fields as generate() arguments
    assert token_lists(direct, EOS, PAD) == out
    src, mask, _ = batch(PAIRS)  # the copy pairs end well inside a generous cap: the outputs do not change
    loose = settings(max_new_tokens=8, num_beams=beams, max_len_a=2.0, max_len_b=2)
    assert decode(trained, src, mask, loose) == [t for _, t in PAIRS]


def test_no_repeat_ngram_bans_the_completing_token():
    logp = torch.zeros(1, 10)
    prefix = torch.tensor([[1, 4, 5, 6, 4]])  # "4 5" seen; ending in 4 -> 5 would repeat the bigram
    constrain(logp, prefix, step=4, gen=GenerationConfig(no_repeat_ngram_size=2), eos_id=EOS)
    assert logp[0, 5] == float("-inf") and (logp[0, [0, 1, 2, 3, 4, 6, 7, 8, 9]] == 0).all()


def test_beam_search_with_cache_survives_reordering():
    """An untrained model is unsure, so beams overtake one another every step and the cache must follow them."""
    model = untrained(n_decoder_layers=2)  # a decoder deeper than the encoder: the cache grows its layers
    src = torch.randint(3, 40, (3, 6))
    gen = settings(max_new_tokens=12, num_beams=4, no_repeat_ngram_size=2)
    mask = torch.ones_like(src)
    assert decode(model, src, mask, gen) == decode(model, src, mask, gen, use_cache=False)
    out = model(input_ids=src, attention_mask=mask, decoder_input_ids=torch.full((3, 1), BOS), use_cache=True)
    assert isinstance(out.cache, EncoderDecoderCache) and out.cache.get_seq_length() == 1
    assert out.cache.cross_attention_cache.layers[1].keys.shape == (3, 4, 6, 8)  # (B, H, S, Dh), kept once


@pytest.mark.parametrize("seed", range(6))
def test_generate_gives_the_suites_beam_search_tokens(seed):
    """transformers' beam search and the suite's, with the same settings (length penalty on both sides of 1, the
    source cap, min length, no-repeat n-grams): the same tokens for every source."""
    model = untrained(n_decoder_layers=2, seed=seed)
    with torch.no_grad():  # a likelier EOS: hypotheses end at many lengths, so the length penalty matters
        model.shared.tokens.weight[EOS] += torch.randn(32)
    src = torch.randint(3, 40, (5, 7))
    mask = torch.ones_like(src)
    mask[0, 3:] = mask[2, 5:] = 0
    for beams, penalty, ngram in ((4, 0.6, 0), (3, 2.0, 2), (1, 1.0, 2)):
        gen = settings(max_new_tokens=14, num_beams=beams, length_penalty=penalty, no_repeat_ngram_size=ngram,
                       max_len_a=1.2, max_len_b=2, min_new_tokens=2, suppress_tokens=[PAD])
        assert decode(model, src, mask, gen) == search(model, src, mask, gen), (beams, penalty, ngram)


def test_save_pretrained_round_trip(trained, tmp_path):
    """save_pretrained -> AutoModelForSeq2SeqLM.from_pretrained: the same logits and the same generation settings
    (a run folder loaded where the suite is not installed: tests/test_translation.py)."""
    trained = copy.deepcopy(trained)  # the fixture keeps its own settings
    trained.generation_config = settings(max_new_tokens=8, num_beams=3, length_penalty=0.6, max_len_a=1.5,
                                         max_len_b=2)
    trained.save_pretrained(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "generation_config.json").read_text())["max_len_a"] == 1.5
    again = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "run").eval()
    assert type(again) is SuiteForConditionalGeneration
    assert (again.generation_config.num_beams, again.generation_config.max_len_a) == (3, 1.5)
    src, mask, labels = batch(PAIRS)
    with torch.no_grad():
        logits = trained(input_ids=src, attention_mask=mask, labels=labels).logits
        assert torch.equal(logits, again(input_ids=src, attention_mask=mask, labels=labels).logits)
    assert torch.equal(trained.generate(input_ids=src, attention_mask=mask),
                       again.generate(input_ids=src, attention_mask=mask))


def test_final_logits_bias_is_saved_and_untied_heads_keep_their_own_matrix(tmp_path):
    torch.manual_seed(0)
    model = tiny(final_logits_bias=True, tie_word_embeddings=False).eval()
    assert model.lm_head.weight is not model.shared.tokens.weight
    assert torch.equal(model.final_logits_bias, torch.zeros(1, 16))
    with torch.no_grad():
        model.final_logits_bias.normal_()
    model.save_pretrained(tmp_path)
    again = SuiteForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert torch.equal(again.final_logits_bias, model.final_logits_bias)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    src, mask, labels = batch(PAIRS)
    with torch.no_grad():
        assert torch.equal(model(input_ids=src, attention_mask=mask, labels=labels).logits,
                           again(input_ids=src, attention_mask=mask, labels=labels).logits)
