"""Sequence-to-sequence on the shared core (translation, summarisation): the model, and greedy / beam decoding.

Shapes: B batch, K beams, S source length, T target length, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.transformer import EncoderDecoder, KVCache, TokenEmbedding, TransformerConfig, init_weights


@dataclass
class GenerationConfig:
    """How to decode; maximum lengths always come from here, never from a library default."""

    max_new_tokens: int = 64  # hard cap on generated tokens (EOS excluded)
    max_len_a: float = 0.0  # >0: also at most max_len_a * source tokens + max_len_b per input (fairseq's
    max_len_b: int = 0  # --max-len-a/b): an undertrained model's rambling stops near the source's length
    min_new_tokens: int = 0  # EOS is forbidden before this many tokens
    num_beams: int = 1  # 1 = greedy
    length_penalty: float = 1.0  # beam score = sum log p / length ** length_penalty
    no_repeat_ngram_size: int = 0  # forbid repeating any n-gram of this size; 0 = off


class Seq2SeqTransformer(nn.Module):
    """Shared source/target embedding -> the core's encoder-decoder -> output projection (tied to the embedding)."""

    def __init__(self, cfg: TransformerConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int,
                 tie_embeddings: bool = True, label_smoothing: float = 0.1):
        super().__init__()
        self.embed = TokenEmbedding(vocab_size, cfg.d_model, padding_idx=pad_id)
        self.core = EncoderDecoder(cfg)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        init_weights(self.core)
        if tie_embeddings:  # one matrix for input and output tokens (Press & Wolf 2017, as in the paper)
            self.lm_head.weight = self.embed.embed.weight
        self.pad_id, self.bos_id, self.eos_id, self.label_smoothing = pad_id, bos_id, eos_id, label_smoothing

    def encode(self, input_ids, attention_mask):
        return self.core.encoder(self.embed(input_ids), attention_mask.bool())  # (B, S, D)

    def forward(self, input_ids, attention_mask, labels=None, decoder_input_ids=None) -> dict:
        """Teacher forcing: labels (B, T) are the target followed by EOS, padded with -100."""
        if decoder_input_ids is None:  # shift right: BOS, y1, ..., y_{T-1}
            shifted = labels.masked_fill(labels == -100, self.pad_id)
            decoder_input_ids = F.pad(shifted[:, :-1], (1, 0), value=self.bos_id)
        memory = self.encode(input_ids, attention_mask)
        h = self.core.decoder(self.embed(decoder_input_ids), memory, attention_mask.bool())  # (B, T, D)
        logits = self.lm_head(h).float()  # (B, T, V)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                          label_smoothing=self.label_smoothing)
        return out

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, gen: GenerationConfig, use_cache: bool = True) -> list[list[int]]:
        """Decode each source; returns token ids without BOS/EOS. Beam search when gen.num_beams > 1."""
        if gen.num_beams > 1:
            return beam_search(self, input_ids, attention_mask, gen, use_cache)
        return greedy(self, input_ids, attention_mask, gen, use_cache)


class Stepper:
    """Next-token log-probabilities for a batch of prefixes, from the KV cache or by recomputing the prefix."""

    def __init__(self, model: Seq2SeqTransformer, input_ids, attention_mask, rows: int, max_len: int,
                 use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.mask = attention_mask.bool()
        memory = model.encode(input_ids, attention_mask)
        if rows != len(input_ids):  # beams: K copies of each source
            k = rows // len(input_ids)
            memory, self.mask = memory.repeat_interleave(k, 0), self.mask.repeat_interleave(k, 0)
        self.memory_kv = model.core.decoder.memory_kv(memory)
        self.cache: list[KVCache] | None = None
        if use_cache:
            self.cache = model.core.decoder.init_cache(rows, max_len, memory.device, memory.dtype)

    def __call__(self, prefix: torch.Tensor) -> torch.Tensor:
        """prefix (R, t) of tokens so far -> log p(next token) (R, V)."""
        decoder = self.model.core.decoder
        new = prefix[:, -1:] if self.use_cache else prefix
        h = decoder(self.model.embed(new), memory_padding_mask=self.mask, memory_kv=self.memory_kv, cache=self.cache)
        return self.model.lm_head(h[:, -1]).float().log_softmax(-1)  # (R, V)

    def reorder(self, index: torch.Tensor) -> None:
        self.memory_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.memory_kv]
        self.mask = self.mask.index_select(0, index)
        for layer in self.cache or []:
            layer.reorder(index)


def length_limits(attention_mask: torch.Tensor, gen: GenerationConfig) -> torch.Tensor:
    """The most tokens each input may generate (B,): max_new_tokens, or less by the source-relative cap."""
    limit = torch.full((len(attention_mask),), gen.max_new_tokens, device=attention_mask.device)
    if gen.max_len_a > 0:
        relative = (gen.max_len_a * attention_mask.sum(-1) + gen.max_len_b).long()
        limit = limit.minimum(relative.clamp(min=max(1, gen.min_new_tokens)))
    return limit


def constrain(logp: torch.Tensor, prefix: torch.Tensor, step: int, gen: GenerationConfig, eos_id: int,
              limit: torch.Tensor) -> None:
    """In place: forbid EOS before min_new_tokens and any token that would repeat an n-gram; rows that have
    generated `limit` (R,) tokens may only end."""
    if step < gen.min_new_tokens:
        logp[:, eos_id] = float("-inf")
    full = limit <= step
    if full.any():
        keep = logp[full, eos_id]
        logp[full] = float("-inf")
        logp[full, eos_id] = keep
    n = gen.no_repeat_ngram_size
    if n and prefix.size(1) >= n:
        rows = prefix.tolist()
        for r, seq in enumerate(rows):
            tail = tuple(seq[len(seq) - n + 1:])
            banned = [seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == tail]
            if banned:
                logp[r, banned] = float("-inf")


def greedy(model, input_ids, attention_mask, gen: GenerationConfig, use_cache: bool = True) -> list[list[int]]:
    B = len(input_ids)
    limit = length_limits(attention_mask, gen)  # (B,)
    steps = int(limit.max()) + 1  # the last step can only emit EOS
    step = Stepper(model, input_ids, attention_mask, B, steps, use_cache)
    prefix = torch.full((B, 1), model.bos_id, device=input_ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for t in range(steps):
        logp = step(prefix)
        constrain(logp, prefix, t, gen, model.eos_id, limit)
        nxt = logp.argmax(-1).masked_fill(done, model.pad_id)  # (B,)
        prefix = torch.cat([prefix, nxt[:, None]], 1)
        done |= nxt == model.eos_id
        if done.all():
            break
    return [strip(seq, model) for seq in prefix[:, 1:].tolist()]


def strip(seq: list[int], model) -> list[int]:
    return seq[: seq.index(model.eos_id)] if model.eos_id in seq else [t for t in seq if t != model.pad_id]


def beam_search(model, input_ids, attention_mask, gen: GenerationConfig, use_cache: bool = True) -> list[list[int]]:
    """Keep the K best prefixes per source; a prefix that emits EOS is scored sum log p / length ** length_penalty.

    Stops for a source once K hypotheses are finished and no live beam can beat the worst of them."""
    B, K = len(input_ids), gen.num_beams
    limit = length_limits(attention_mask, gen).repeat_interleave(K)  # (B*K,)
    steps = int(limit.max()) + 1  # the last step can only emit EOS
    step = Stepper(model, input_ids, attention_mask, B * K, steps, use_cache)
    prefix = torch.full((B * K, 1), model.bos_id, device=input_ids.device)
    scores = torch.zeros(B, K, device=input_ids.device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    closed = [False] * B
    for t in range(steps):
        logp = step(prefix)  # (B*K, V)
        constrain(logp, prefix, t, gen, model.eos_id, limit)
        V, norm = logp.size(-1), (t + 1) ** gen.length_penalty  # an EOS now makes a hypothesis of t + 1 steps
        cand = (scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)
        top, idx = cand.topk(2 * K, dim=-1)  # (B, 2K): enough to find K that do not end
        beam, token = idx // V, idx % V
        next_rows, next_tokens, next_scores = [], [], []
        for b in range(B):
            chosen = []
            for s, k, tok in zip(top[b].tolist(), beam[b].tolist(), token[b].tolist()):
                if closed[b] or s == float("-inf"):
                    break
                if tok == model.eos_id:
                    if len(finished[b]) < K or s / norm > finished[b][-1][0]:
                        finished[b].append((s / norm, prefix[b * K + k, 1:].tolist()))
                        finished[b] = sorted(finished[b], key=lambda x: -x[0])[:K]
                    continue
                chosen.append((s, k, tok))
                if len(chosen) == K:
                    break
            if len(finished[b]) == K and (not chosen or chosen[0][0] / norm <= finished[b][-1][0]):
                closed[b] = True
            chosen += [(float("-inf"), 0, model.pad_id)] * (K - len(chosen))  # dead beams keep the shape
            for s, k, tok in chosen:
                next_rows.append(b * K + k)
                next_tokens.append(tok)
                next_scores.append(s)
        if all(closed):
            break
        index = torch.tensor(next_rows, device=prefix.device)
        prefix = torch.cat([prefix.index_select(0, index), torch.tensor(next_tokens, device=prefix.device)[:, None]], 1)
        scores = torch.tensor(next_scores, device=prefix.device).view(B, K)
        step.reorder(index)
    # at its length limit every live beam could only end, so each source has finished hypotheses and no live ones
    return [strip(max(hyps, key=lambda x: x[0])[1], model) for hyps in finished]
