"""The shared token-classification head: one label per WORD, read at each word's first subword (NER, chunking).

text stem (+ a char-CNN per word, Ma & Hovy 2016) -> the shared encoder -> per-word tag scores -> softmax
cross-entropy or a linear-chain CRF; decoded by argmax, by Viterbi over the IOB2-legal paths (`constrained`) or by
the CRF's Viterbi (`config.tag_decoder`). Every loss and decode is over words, never over subword pieces.

transformers' token-classification pipeline calls the model with bare input_ids and takes the argmax of `logits`
(B, S, num_labels) at every subword. So the model finds the words itself when `word_starts` is not given (from its
vocabulary index: "##" pieces continue a word, special tokens are none) and returns, per subword, its word's
Viterbi max-marginals (the score of the best legal path through each tag), whose argmax is the Viterbi path.
Imports: torch, transformers and the suite's model files only (see modeling.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import TokenClassifierOutput

from .modeling import SuiteConfig, SuiteModel, SuitePreTrainedModel

IGNORE = -100  # label of non-first subwords and padding (cross_entropy's ignore_index)
ILLEGAL = -1e4  # score added to a tag move IOB2 forbids
DECODERS = ("argmax", "constrained", "crf")


# -- tag paths ---------------------------------------------------------------------------------------------------


def transition_rules(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Allowed (previous, next) tag pairs and allowed first tags in IOB2: I-X only inside an X entity."""
    def ok(prev: str | None, nxt: str) -> bool:
        return not nxt.startswith("I-") or (prev is not None and prev != "O" and prev[2:] == nxt[2:])

    allowed = torch.tensor([[ok(p, n) for n in labels] for p in labels])  # (L, L)
    return allowed, torch.tensor([ok(None, n) for n in labels])


def viterbi(scores, mask, trans, start) -> list[list[int]]:
    """Best tag path per row of scores (B, W, L) under transition (L, L) and start (L,) scores; mask (B, W)."""
    score, back = start + scores[:, 0], []  # (B, L)
    for w in range(1, scores.size(1)):
        best, idx = (score[:, :, None] + trans).max(1)  # (B, L) over the previous tag
        back.append(idx)
        score = torch.where(mask[:, w, None], best + scores[:, w], score)
    tag, path = score.argmax(-1), [None] * scores.size(1)  # (B,) the best last tag of each row
    for w in range(scores.size(1) - 1, 0, -1):  # back from each row's last word (past it, the tag just waits)
        path[w] = tag
        tag = torch.where(mask[:, w], back[w - 1].gather(1, tag[:, None]).squeeze(1), tag)
    path[0] = tag
    return [row[:n] for row, n in zip(torch.stack(path, 1).tolist(), mask.sum(1).tolist())]


def max_marginals(scores, mask, trans, start) -> torch.Tensor:
    """Per word and tag, the score of the best path through that tag: Viterbi's forward max + backward max - the
    word's own score (counted in both). (B, W, L); at every real word its argmax is the Viterbi path's tag."""
    W = scores.size(1)
    forward = [start + scores[:, 0]]  # best prefix ending in each tag, (B, L)
    for w in range(1, W):
        forward.append((forward[-1][:, :, None] + trans).amax(1) + scores[:, w])
    backward = [scores[:, W - 1]]  # best suffix starting in each tag; a row's last word has none after it
    for w in range(W - 2, -1, -1):
        after = (trans + backward[-1][:, None, :]).amax(2)  # (B, L) over the next tag
        backward.append(scores[:, w] + torch.where(mask[:, w + 1, None], after, 0.0))
    return torch.stack(forward, 1) + torch.stack(backward[::-1], 1) - scores


class SoftmaxTags(nn.Module):
    """Independent per-word softmax; decoded by argmax, or by Viterbi over the IOB2-legal paths (`constrained`).
    The IOB2 rules are tables built from the labels (not saved: rebuilt whenever the model is initialised)."""

    def __init__(self, config: SuiteConfig):
        super().__init__()
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.constrained = config.tag_decoder != "argmax"
        L = len(self.labels)
        self.register_buffer("rule_trans", torch.zeros(L, L), persistent=False)
        self.register_buffer("rule_start", torch.zeros(L), persistent=False)

    def reset_parameters(self) -> None:
        allowed, start = transition_rules(self.labels)
        with torch.no_grad():
            self.rule_trans.copy_((~allowed).float() * ILLEGAL)
            self.rule_start.copy_((~start).float() * ILLEGAL)

    def path_scores(self, scores) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What Viterbi maximises: per-word log-probabilities under the IOB2 rules."""
        return scores.log_softmax(-1), self.rule_trans, self.rule_start

    def loss(self, scores, tags, mask):
        return F.cross_entropy(scores.transpose(1, 2), tags, ignore_index=IGNORE)

    def decode(self, scores, mask, constrained: bool | None = None) -> list[list[int]]:
        """Tag ids per row of scores (B, W, L) over its real words; `constrained=False`: the per-word argmax."""
        if not (self.constrained if constrained is None else constrained):
            return [row[:n] for row, n in zip(scores.argmax(-1).tolist(), mask.sum(1).tolist())]
        emissions, trans, start = self.path_scores(scores)
        return viterbi(emissions, mask, trans, start)

    def marginals(self, scores, mask) -> torch.Tensor:
        """Scores (B, W, L) whose argmax per word is `decode`'s path: the max-marginals, or the scores for argmax."""
        if not self.constrained:
            return scores
        emissions, trans, start = self.path_scores(scores)
        return max_marginals(emissions, mask, trans, start)


class CRF(SoftmaxTags):
    """Linear-chain CRF (Lample et al., 2016) with learned transition and start scores (no end scores, to stay
    compact), zero at first; illegal IOB2 moves stay forbidden."""

    def __init__(self, config: SuiteConfig):
        super().__init__(config)
        L = len(self.labels)
        self.trans, self.start = nn.Parameter(torch.zeros(L, L)), nn.Parameter(torch.zeros(L))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.zeros_(self.trans)
        nn.init.zeros_(self.start)

    def path_scores(self, scores):
        return scores, self.trans + self.rule_trans, self.start + self.rule_start

    def loss(self, scores, tags, mask):
        """Negative log-likelihood of the gold paths per word: log Z - score(gold)."""
        _, trans, start = self.path_scores(scores)
        gold_tags = tags.clamp(min=0)  # (B, W), padding points at tag 0 and is masked out
        gold = start[gold_tags[:, 0]] + (scores.gather(2, gold_tags[..., None]).squeeze(-1) * mask).sum(1)
        gold = gold + (trans[gold_tags[:, :-1], gold_tags[:, 1:]] * mask[:, 1:]).sum(1)
        alpha = start + scores[:, 0]  # (B, L) log-sum of all paths ending in each tag
        for w in range(1, scores.size(1)):
            nxt = torch.logsumexp(alpha[:, :, None] + trans, dim=1) + scores[:, w]
            alpha = torch.where(mask[:, w, None], nxt, alpha)
        return (torch.logsumexp(alpha, -1) - gold).sum() / mask.sum()


# -- words and their characters ------------------------------------------------------------------------------------


class CharCNN(nn.Module):
    """Characters of each word -> embedding -> conv (width 3) -> max over the word -> D (Ma & Hovy, 2016)."""

    def __init__(self, config: SuiteConfig):
        super().__init__()
        self.embed = nn.Embedding(config.char_vocab_size, config.char_dim, padding_idx=0)
        self.conv = nn.Conv1d(config.char_dim, config.char_filters, kernel_size=3, padding=1)
        self.proj = nn.Linear(config.char_filters, config.d_model)

    def forward(self, chars):  # (B, W, C) char ids, 0 = padding
        B, W, C = chars.shape
        x = self.embed(chars.reshape(B * W, C)).transpose(1, 2)  # (B*W, char_dim, C)
        x = self.conv(x).masked_fill((chars.reshape(B * W, 1, C) == 0), -1e4).amax(-1)  # (B*W, filters)
        return self.proj(torch.relu(x)).view(B, W, -1)  # (B, W, D)


class VocabularyIndex(nn.Module):
    """What the model knows of its tokenizer's vocabulary, to find words and their characters in bare input_ids:
    each piece's kind (0: not a word, e.g. [CLS]; 1: starts a word; 2: "##" continues one), each piece's character
    ids (char-CNN only) and the character set (Unicode code points; id = position + 2, 0 padding, 1 unknown).
    Saved with the weights; filled by `SuiteForTokenClassification.index_vocabulary`."""

    def __init__(self, config: SuiteConfig):
        super().__init__()
        self.register_buffer("kind", torch.zeros(config.vocab_size, dtype=torch.int8))
        if config.char_vocab_size:
            self.register_buffer("chars", torch.zeros(config.vocab_size, config.max_word_chars, dtype=torch.int32))
            self.register_buffer("codes", torch.zeros(config.char_vocab_size - 2, dtype=torch.int32))

    def reset_parameters(self) -> None:
        for buffer in self.buffers(recurse=False):
            nn.init.zeros_(buffer)  # transformers' guard keeps a loaded index

    def char_map(self) -> dict[str, int]:
        return {chr(c): i + 2 for i, c in enumerate(self.codes.tolist())} if hasattr(self, "codes") else {}

    def words(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """word_starts (B, W), each word's first piece (0 past a row's last word), and the word mask (B, W)."""
        if not self.kind.any():
            raise ValueError("this model's vocabulary index is empty: fill it with index_vocabulary(...)")
        first = (self.kind[input_ids] == 1) & attention_mask.bool()  # (B, S)
        S = first.size(1)
        W = max(1, int(first.sum(1).max()))
        position = torch.arange(S, device=first.device).expand_as(first)
        starts = torch.where(first, position, S).sort(1).values[:, :W]  # (B, W) first pieces, then S
        mask = starts < S
        return starts.masked_fill(~mask, 0), mask

    def token_words(self, input_ids, attention_mask, word_starts, word_mask) -> torch.Tensor:
        """Each subword's word (B, S): its index in word_starts, -1 for special tokens and padding."""
        first = torch.zeros_like(input_ids).scatter_add_(1, word_starts, word_mask.long())  # (B, S) 1 at starts
        in_word = (self.kind[input_ids] > 0) & attention_mask.bool()
        return torch.where(in_word, first.cumsum(1) - 1, -1)

    def word_chars(self, input_ids, word_starts, token_word) -> torch.Tensor:
        """Each word's character ids (B, W, K): its pieces' characters end to end, the first K."""
        B, W = word_starts.shape
        pieces = self.chars[input_ids].long() * (token_word >= 0)[..., None]  # (B, S, K), 0 outside words
        K = pieces.size(-1)
        length = (pieces > 0).sum(-1)  # (B, S)
        before = length.cumsum(1) - length  # characters of the row before each piece
        word = token_word.clamp(min=0)
        offset = before - before.gather(1, word_starts).gather(1, word)  # (B, S) within the piece's word
        slot = offset[..., None] + torch.arange(K, device=pieces.device)  # (B, S, K) place in the word
        keep = (pieces > 0) & (slot < K)
        index = torch.where(keep, word[..., None] * K + slot, W * K)  # the dropped ones go to one spare slot
        out = torch.zeros(B, W * K + 1, dtype=torch.long, device=pieces.device)
        out.scatter_(1, index.view(B, -1), pieces.view(B, -1))
        return out[:, :-1].view(B, W, K)


# -- the model ---------------------------------------------------------------------------------------------------


@dataclass
class TokenTaggingOutput(TokenClassifierOutput):
    """transformers' token-classification output (`logits` per subword, what pipelines read) plus the per-word
    scores the suite decodes and which words are real."""

    word_scores: torch.Tensor | None = None  # (B, W, num_labels) emissions per word
    word_mask: torch.Tensor | None = None  # (B, W) bool


class SuiteForTokenClassification(SuitePreTrainedModel):
    """Text stem (+ char-CNN at each word's first subword) -> the shared encoder -> per-word linear scores -> tags.

    forward: input_ids, attention_mask (B, S); optional word_starts (B, W), the position of each word's first
    subword (0 = no word; [CLS] sits there), and chars (B, W, C) char ids per word (char-CNN); both are found in
    input_ids when absent. labels (B, S): a word's tag at its first subword, -100 elsewhere. `logits` (B, S, L): each
    subword gets its word's decoding scores (not computed in a training step given labels, which needs only the loss).
    """

    pipeline_tag = "token-classification"

    def __init__(self, config: SuiteConfig):
        super().__init__(config)
        if config.tag_decoder not in DECODERS:
            raise ValueError(f"tag_decoder={config.tag_decoder!r}: choose one of {', '.join(DECODERS)}")
        self.model = SuiteModel(config)
        self.chars = CharCNN(config) if config.char_vocab_size else None
        self.vocab = VocabularyIndex(config)
        p = config.dropout if config.classifier_dropout is None else config.classifier_dropout
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.tags = (CRF if config.tag_decoder == "crf" else SoftmaxTags)(config)
        self.post_init()

    @torch.no_grad()
    def index_vocabulary(self, vocab: dict[str, int], specials: Iterable[str], unk_token: str, chars: str = "",
                         prefix: str = "##") -> None:
        """Fill the vocabulary index from a WordPiece vocabulary (piece -> id), its special tokens other than the
        unknown one (not words), and the char-CNN's characters in id order (id = position + 2)."""
        ids, specials = {c: i + 2 for i, c in enumerate(chars)}, set(specials) - {unk_token}
        kinds, rows, K = [0] * len(self.vocab.kind), {}, self.config.max_word_chars
        for piece, i in vocab.items():
            if piece in specials:
                continue
            continues = piece.startswith(prefix) and len(piece) > len(prefix)
            kinds[i] = 2 if continues else 1
            text = piece[len(prefix):] if continues else piece
            rows[i] = [1] if piece == unk_token else [ids.get(c, 1) for c in text[:K]]
        self.vocab.kind.copy_(torch.tensor(kinds))
        if self.chars is not None:
            if len(chars) != len(self.vocab.codes):
                raise ValueError(f"{len(chars)} characters for a char-CNN of {len(self.vocab.codes)}")
            table = torch.zeros_like(self.vocab.chars)
            for i, row in rows.items():
                table[i, : len(row)] = torch.tensor(row)
            self.vocab.chars.copy_(table)
            self.vocab.codes.copy_(torch.tensor([ord(c) for c in chars], dtype=torch.int32))

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, word_starts=None, chars=None,
                labels=None, **kwargs) -> TokenTaggingOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x, mask = self.model.stem(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        if word_starts is None:
            word_starts, words = self.vocab.words(input_ids, attention_mask)
        else:
            words = word_starts > 0  # (B, W)
        need_logits = not (self.training and labels is not None)
        token_word = None
        if need_logits or (self.chars is not None and chars is None):
            token_word = self.vocab.token_words(input_ids, attention_mask, word_starts, words)
        index = word_starts[..., None].expand(-1, -1, x.size(-1))  # (B, W, D)
        if self.chars is not None:
            if chars is None:
                chars = self.vocab.word_chars(input_ids, word_starts, token_word)
            x = x.scatter_add(1, index, (self.chars(chars) * words[..., None]).to(x.dtype))
        h = self.model.encoder(x, mask)  # (B, S, D)
        scores = self.classifier(self.dropout(h.gather(1, index))).float()  # (B, W, L)
        loss = logits = None
        if labels is not None:
            tags = labels.gather(1, word_starts).masked_fill(~words, IGNORE)  # (B, W) the first subwords' labels
            loss = self.tags.loss(scores, tags, words)
        if need_logits:  # each subword gets its word's scores; special tokens and padding get zeros
            per_word = self.tags.marginals(scores, words)  # (B, W, L)
            gathered = per_word.gather(1, token_word.clamp(min=0)[..., None].expand(-1, -1, per_word.size(-1)))
            logits = gathered * (token_word >= 0)[..., None]  # (B, S, L)
        return TokenTaggingOutput(loss=loss, logits=logits, word_scores=scores, word_mask=words)

    def decode(self, output: TokenTaggingOutput, constrained: bool | None = None) -> list[list[int]]:
        """Tag ids per example over its words, by the configured decoder (`constrained=False`: per-word argmax)."""
        return self.tags.decode(output.word_scores, output.word_mask, constrained)
