"""The sequence-to-sequence LM head on the shared core (translation, summarisation), as a transformers model.

Token ids -> one shared embedding -> the core's encoder; target ids -> the same embedding -> the core's decoder,
attending to the encoder output -> logits over the vocabulary (the output matrix tied to the embedding). Decoding is
transformers' `generate()` (GenerationMixin) with its caches: `CacheLayer` lets the core's self-attention append to a
transformers cache layer, and each layer's cross-attention keys and values are computed once per source and kept in
the EncoderDecoderCache. `SourceLengthCap` adds fairseq's source-relative length cap (max_len_a * source tokens +
max_len_b), which transformers lacks, from the generation config.

The suite's own greedy and beam search follow at the end. They were changed to transformers' semantics where the
two differed (lengths count generated tokens, EOS included, and length_penalty divides by that count; a length cap
ends a hypothesis there as max_new_tokens does, without forcing an EOS; only the first K of the 2K best continuations
may finish; a source closes when its best open prefix, scored at its current length, cannot beat its worst finished
hypothesis, i.e. early_stopping=False), so both give the same tokens (tests/test_seq2seq.py). The tasks decode with
generate(); the search stays as the reference it is held to, because generate() missed 0.9x of its speed at greedy
decoding with two threads on the suite's shared 2-core CPU (bench/decoding_speed.py: 0.85-0.86x; 0.95-0.97x on one
thread; beam 4: 0.90-0.99x).

Shapes: B batch, K beams, S source length, T target length, V vocabulary, D model dim.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, GenerationMixin, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from .modeling import SuiteConfig, SuitePreTrainedModel
from .stems import TextStem
from .transformer import Decoder, Encoder


def grow(cache: Cache, index: int) -> None:
    """Give `cache` a layer `index`: generate() sizes its DynamicCache by config.num_hidden_layers, which is the
    encoder's depth, and the decoder may be deeper."""
    while len(cache.layers) <= index:
        cache.layers.append(DynamicLayer())


class CacheLayer:
    """One decoder layer's self-attention cache as the core sees a cache (`length`, `append(k, v)`), kept in a
    transformers cache so that generate() carries it from step to step and reorders it for beam search."""

    def __init__(self, cache: Cache, index: int):
        self.cache, self.index = cache, index
        grow(cache, index)

    @property
    def length(self) -> int:
        return self.cache.layers[self.index].get_seq_length()

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.update(k, v, self.index)  # every key and value so far, 2 x (B, H, length, Dh)


class SourceEncoder(nn.Module):
    """The encoder side as one module (what `get_encoder()` gives generate(), which runs it once per source): token
    ids -> the shared embedding -> the core's encoder. Built around the model's own modules on demand, never
    registered in the model, so each weight keeps one name."""

    main_input_name = "input_ids"

    def __init__(self, embed: TextStem, encoder: Encoder):
        super().__init__()
        self.embed, self.encoder = embed, encoder

    def forward(self, input_ids, attention_mask=None, **unused) -> BaseModelOutput:
        x, mask = self.embed(input_ids, attention_mask)
        return BaseModelOutput(last_hidden_state=self.encoder(x, mask))  # (B, S, D)


def source_limits(attention_mask: torch.Tensor, a: float, b: float, min_new_tokens: int) -> torch.Tensor:
    """fairseq's --max-len-a/b: each source of n real tokens may generate int(a * n + b) tokens, never fewer than
    min_new_tokens (nor than 1); (B,)."""
    return (a * attention_mask.sum(-1) + b).long().clamp(min=max(1, min_new_tokens or 0))


class SourceLengthCap(StoppingCriteria):
    """Ends every hypothesis of a source once it holds that source's limit (B,) of generated tokens, as transformers
    ends one at max_new_tokens (it is scored at that length; no EOS is forced)."""

    def __init__(self, limits: torch.Tensor):
        self.limits, self.prompt = limits, None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.BoolTensor:
        if self.prompt is None:  # the first call sees the decoder prompt and one generated token
            self.prompt = input_ids.size(1) - 1
        rows = self.limits.to(input_ids.device).repeat_interleave(len(input_ids) // len(self.limits))  # beams
        return input_ids.size(1) - self.prompt >= rows


class SuiteForConditionalGeneration(SuitePreTrainedModel, GenerationMixin):
    """Shared embedding -> the core's encoder-decoder -> linear map to the vocabulary (tied to the embedding: Press &
    Wolf 2017, as in the paper, when config.tie_word_embeddings), plus Marian's and BART's fixed `final_logits_bias`
    when config.final_logits_bias. `labels` (B, T) are the target followed by EOS, padded with -100; the decoder reads
    them shifted right behind `decoder_start_token_id`. Cross-entropy with config.label_smoothing."""

    _tied_weights_keys = {"lm_head.weight": "shared.tokens.weight"}

    def __init__(self, config: SuiteConfig):
        config.is_encoder_decoder = True
        super().__init__(config)
        core = config.core()
        self.shared = TextStem(config)  # source and target tokens, scaled by sqrt(D) when config.embed_scale
        self.encoder, self.decoder = Encoder(core), Decoder(core)
        self.encoder.main_input_name = self.main_input_name  # generate() asks the encoder which input it reads
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.final_logits_bias:  # persistent: checkpoints carry it
            self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size))
        else:
            self.final_logits_bias = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self and self.final_logits_bias is not None:  # the head's own buffer (as Marian does)
            nn.init.zeros_(self.final_logits_bias)

    def get_input_embeddings(self) -> nn.Module:
        return self.shared.tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.shared.tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_encoder(self, modality: str | None = None) -> SourceEncoder:
        return SourceEncoder(self.shared, self.encoder)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing's decoder input: start, y1, ..., y_{T-1} (the -100 padding read as PAD)."""
        shifted = labels.masked_fill(labels == -100, self.config.pad_token_id)
        return F.pad(shifted[:, :-1], (1, 0), value=self.config.decoder_start_token_id)

    prepare_decoder_input_ids_from_labels = shift_right  # what transformers' DataCollatorForSeq2Seq calls

    def cross_kv(self, memory: torch.Tensor, cache: Cache | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's cross-attention keys and values of the encoder output: computed on the first step and
        kept in the cache's cross-attention half (beam search reorders them with the rest), as Marian does."""
        if not isinstance(cache, EncoderDecoderCache):
            return self.decoder.memory_kv(memory)
        cross, kv = cache.cross_attention_cache, []
        for i, layer in enumerate(self.decoder.layers):
            grow(cross, i)
            if cache.is_updated.get(i):
                kv.append((cross.layers[i].keys, cross.layers[i].values))
            else:
                kv.append(cross.update(*layer.cross_attn.memory_kv(memory), i))
                cache.is_updated[i] = True
        return kv

    def decode(self, decoder_input_ids, memory_kv, memory_mask=None, cache=None, last_only: bool = False):
        """Logits (B, T, V) in float32 of the next token after each decoder input; with `cache` (one `length`/`append`
        object per layer) the input holds only the new steps; `last_only`: the last position only (B, 1, V)."""
        x, _ = self.shared(decoder_input_ids)
        h = self.decoder(x, memory_padding_mask=memory_mask, memory_kv=memory_kv, cache=cache)  # (B, T, D)
        logits = self.lm_head(h[:, -1:] if last_only else h).float()
        return logits if self.final_logits_bias is None else logits + self.final_logits_bias

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, labels=None, cache=None, use_cache=None, past_key_values=None,
                **kwargs) -> Seq2SeqLMOutput:
        """input_ids (B, S) with attention_mask (B, S) 1 at real tokens (or `encoder_outputs`); decoder_input_ids
        (B, T), or labels to shift. `cache` (alias past_key_values, the name before transformers 5.x) is an
        EncoderDecoderCache whose decoder steps are already read: decoder_input_ids then holds the new steps only.
        The decoder is causal, so decoder_attention_mask (padding at the end of targets) changes nothing."""
        cache = cache if cache is not None else past_key_values
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = self.shift_right(labels)
        if encoder_outputs is None:
            encoder_outputs = self.get_encoder()(input_ids, attention_mask)
        memory = encoder_outputs[0]  # (B, S, D); a tuple or a BaseModelOutput
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        layers = None
        if cache is not None:
            own = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
            layers = [CacheLayer(own, i) for i in range(len(self.decoder.layers))]
        mask = attention_mask.bool() if attention_mask is not None else None
        logits = self.decode(decoder_input_ids, self.cross_kv(memory, cache), mask, layers)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                   label_smoothing=self.config.label_smoothing)
        return Seq2SeqLMOutput(loss=loss, logits=logits, cache=cache, encoder_last_hidden_state=memory)

    def generate(self, inputs=None, generation_config=None, stopping_criteria=None, **kwargs):
        """transformers' generate(), plus the source-relative cap of the generation config (`max_len_a`, `max_len_b`,
        also accepted as arguments): a source of n real tokens (its attention mask) generates at most
        max_len_a * n + max_len_b tokens when max_len_a > 0. Returns (B, 1 + L) ids, the decoder start first."""
        config = resolve(self, generation_config)
        a = kwargs.pop("max_len_a", getattr(config, "max_len_a", 0)) or 0
        b = kwargs.pop("max_len_b", getattr(config, "max_len_b", 0)) or 0
        if a > 0:
            ids = inputs if inputs is not None else kwargs.get("input_ids")
            mask = kwargs.get("attention_mask")
            if mask is None and ids is None:
                raise ValueError("max_len_a counts source tokens: give input_ids or attention_mask")
            if mask is None:  # the encoder reads every position then
                mask = torch.ones_like(ids)
            cap = SourceLengthCap(source_limits(mask, a, b, kwargs.get("min_new_tokens", config.min_new_tokens)))
            stopping_criteria = StoppingCriteriaList([*(stopping_criteria or []), cap])
        return super().generate(inputs, generation_config, stopping_criteria=stopping_criteria, **kwargs)


UNSET = {"num_beams": 1, "length_penalty": 1.0, "max_length": 20, "min_new_tokens": 0, "no_repeat_ngram_size": 0,
         "early_stopping": False}  # transformers' values for the settings the suite reads, where a config has None


def resolve(model, gen: GenerationConfig | None) -> GenerationConfig:
    """The settings generate() decodes with, resolved as transformers does: `gen` (or the model's generation config),
    its unset fields (and absent custom ones, such as max_len_a) from the model's, then transformers' defaults."""
    gen = copy.deepcopy(gen if gen is not None else model.generation_config)
    gen.update(**model.generation_config.to_dict(), defaults_only=True, allow_custom_entries=True)
    gen.update(**UNSET, defaults_only=True)
    return gen


def token_lists(sequences: torch.Tensor, eos_id: int, pad_id: int) -> list[list[int]]:
    """generate()'s (B, 1 + L) output as token ids without the decoder start, EOS and the padding after them."""
    return [strip(seq, eos_id, pad_id) for seq in sequences[:, 1:].tolist()]


def strip(seq: list[int], eos_id: int, pad_id: int) -> list[int]:
    return seq[: seq.index(eos_id)] if eos_id in seq else [t for t in seq if t != pad_id]


# ----------------------------------------------------------------------------------------------------------------
# The suite's own search, with transformers' semantics (see the module docstring); `gen` is a GenerationConfig.


def length_limits(attention_mask: torch.Tensor, gen: GenerationConfig) -> torch.Tensor:
    """The most tokens each input may generate (B,), EOS included: max_new_tokens, or less by the source cap."""
    most = gen.max_new_tokens if gen.max_new_tokens is not None else gen.max_length - 1
    limit = torch.full((len(attention_mask),), most, device=attention_mask.device)
    if (getattr(gen, "max_len_a", 0) or 0) > 0:
        limit = limit.minimum(source_limits(attention_mask, gen.max_len_a, gen.max_len_b or 0, gen.min_new_tokens))
    return limit


def constrain(scores: torch.Tensor, prefix: torch.Tensor, step: int, gen: GenerationConfig, eos_id: int) -> None:
    """In place, as transformers' SuppressTokens, MinNewTokensLength and NoRepeatNGram logits processors: none of
    suppress_tokens, no EOS before min_new_tokens, no token that would repeat an n-gram of the prefix (decoder start
    included)."""
    if gen.suppress_tokens:
        scores[:, gen.suppress_tokens] = float("-inf")
    if step < (gen.min_new_tokens or 0):
        scores[:, eos_id] = float("-inf")
    n = gen.no_repeat_ngram_size or 0
    if n and prefix.size(1) >= n:
        for r, seq in enumerate(prefix.tolist()):
            tail = tuple(seq[len(seq) - n + 1 :])
            banned = [seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i : i + n - 1]) == tail]
            if banned:
                scores[r, banned] = float("-inf")


class Stepper:
    """Next-token logits for a batch of prefixes, from the core's preallocated KV cache or by recomputing the prefix;
    the encoder runs once and each layer's cross-attention keys and values are projected once."""

    def __init__(self, model: SuiteForConditionalGeneration, input_ids, attention_mask, rows: int, max_len: int,
                 use_cache: bool):
        self.model = model
        memory = model.get_encoder()(input_ids, attention_mask).last_hidden_state
        self.mask = attention_mask.bool()
        if rows != len(input_ids):  # beams: K copies of each source
            k = rows // len(input_ids)
            memory, self.mask = memory.repeat_interleave(k, 0), self.mask.repeat_interleave(k, 0)
        self.memory_kv = model.decoder.memory_kv(memory)
        self.cache = model.decoder.init_cache(rows, max_len, memory.device, memory.dtype) if use_cache else None

    def __call__(self, prefix: torch.Tensor) -> torch.Tensor:
        """prefix (R, t) of tokens so far -> logits of the next token (R, V)."""
        new = prefix[:, -1:] if self.cache is not None else prefix
        return self.model.decode(new, self.memory_kv, self.mask, self.cache, last_only=True)[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        self.memory_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.memory_kv]
        self.mask = self.mask.index_select(0, index)
        for layer in self.cache or []:
            layer.reorder(index)


@torch.no_grad()
def search(model: SuiteForConditionalGeneration, input_ids, attention_mask, gen: GenerationConfig | None = None,
           use_cache: bool = True) -> list[list[int]]:
    """The suite's decoding of each source with the settings generate() would use: token ids without start/EOS."""
    gen = resolve(model, gen)
    if gen.early_stopping is not False:
        raise ValueError("the suite's beam search implements transformers' early_stopping=False only")
    attention_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    decode = beam_search if (gen.num_beams or 1) > 1 else greedy
    return decode(model, input_ids, attention_mask, gen, use_cache)


def greedy(model, input_ids, attention_mask, gen: GenerationConfig, use_cache: bool = True) -> list[list[int]]:
    c = model.config
    limit = length_limits(attention_mask, gen)  # (B,)
    steps = int(limit.max())
    step = Stepper(model, input_ids, attention_mask, len(input_ids), steps, use_cache)
    prefix = torch.full((len(input_ids), 1), c.decoder_start_token_id, device=input_ids.device)
    done = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
    for t in range(steps):
        logits = step(prefix)
        constrain(logits, prefix, t, gen, c.eos_token_id)
        nxt = logits.argmax(-1).masked_fill(done, c.pad_token_id)  # (B,)
        prefix = torch.cat([prefix, nxt[:, None]], 1)
        done |= (nxt == c.eos_token_id) | (limit <= t + 1)
        if done.all():
            break
    return token_lists(prefix, c.eos_token_id, c.pad_token_id)


DEAD = -1e9  # transformers' score for beams that must not be chosen (finite, so -inf stays for banned tokens)


def beam_search(model, input_ids, attention_mask, gen: GenerationConfig, use_cache: bool = True) -> list[list[int]]:
    """Keep the K best prefixes per source. Of the 2K best continuations, those among the first K that end (EOS, or
    the source's length limit) join its finished hypotheses, scored sum log p / length ** length_penalty (length:
    generated tokens, EOS included); the best K that do not end continue. A source closes once it holds K finished
    hypotheses and its best open prefix, at its current length, cannot beat the worst of them."""
    c, B, K = model.config, len(input_ids), gen.num_beams
    limit = length_limits(attention_mask, gen).tolist()  # (B,)
    steps, lp = max(limit), gen.length_penalty
    step = Stepper(model, input_ids, attention_mask, B * K, steps, use_cache)
    prefix = torch.full((B * K, 1), c.decoder_start_token_id, device=input_ids.device)
    scores = torch.zeros(B, K, device=input_ids.device)
    scores[:, 1:] = DEAD  # all beams start identical: expand only the first
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]  # best first, at most K
    open_ = [True] * B
    for t in range(steps):
        logp = step(prefix).log_softmax(-1)  # (B*K, V)
        constrain(logp, prefix, t, gen, c.eos_token_id)
        V, norm = logp.size(-1), (t + 1) ** lp
        top, idx = (scores[:, :, None] + logp.view(B, K, V)).view(B, K * V).topk(2 * K, dim=-1)  # (B, 2K)
        rows, tokens, next_scores = [], [], []
        for b, (s_b, i_b) in enumerate(zip(top.tolist(), idx.tolist())):
            cands = [(s, b * K + i // V, i % V) for s, i in zip(s_b, i_b)]
            ends = [limit[b] <= t + 1 or tok == c.eos_token_id for _, _, tok in cands]
            if open_[b]:
                new = [(s / norm, prefix[row, 1:].tolist() + [tok]) for (s, row, tok), e in zip(cands[:K], ends) if e]
                finished[b] = sorted(finished[b] + new, key=lambda h: -h[0])[:K]
            live = sorted(range(2 * K), key=lambda i: -(cands[i][0] + DEAD * ends[i]))[:K]  # stable: rank order
            for i in live:
                rows.append(cands[i][1])
                tokens.append(cands[i][2])
                next_scores.append(cands[i][0] + DEAD * ends[i])
            worst = finished[b][-1][0] if len(finished[b]) == K else DEAD
            open_[b] = open_[b] and next_scores[-K] / norm > worst
        if not any(open_):
            break
        index = torch.tensor(rows, device=prefix.device)
        prefix = torch.cat([prefix.index_select(0, index), torch.tensor(tokens, device=prefix.device)[:, None]], 1)
        scores = torch.tensor(next_scores, device=prefix.device).view(B, K)
        step.reorder(index)
    return [strip(hyps[0][1], c.eos_token_id, c.pad_token_id) for hyps in finished]
