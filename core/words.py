"""Text as words, for tasks that label each word (named entities, chunks, parts of speech): a word's label on its
first subword (the transformers token-classification examples' alignment), windows for sentences longer than the
model reads, their batches, and joining windows back into sentences. The model side is `core.tagging`."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedTokenizerFast

from core.tagging import IGNORE


def to_iob2(tags: list[str]) -> list[str]:
    """IOB1 -> IOB2 (an entity starting with I- gets B-); IOB2 comes back unchanged."""
    out = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and (i == 0 or out[-1] == "O" or out[-1][2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
    return out


def split_windows(pieces: list[list[int]], limit: int) -> list[tuple[int, int]]:
    """Word ranges [lo, hi) whose subwords fit in `limit`: a long sentence becomes consecutive windows, none lost."""
    out, lo, used = [], 0, 0
    for i, p in enumerate(pieces):
        if used + len(p) > limit and i > lo:
            out.append((lo, i))
            lo, used = i, 0
        used += len(p)
    return out + [(lo, len(pieces))]


def word_windows(tok: PreTrainedTokenizerFast, sentences: list[list[str]], tags: list[list[int]] | None,
                 max_len: int, chars: dict[str, int], max_word_chars: int) -> list[dict]:
    """Model inputs per window of each sentence of words: [CLS] subwords [SEP] (at most `max_len`), each word's
    first subword's position, its label there (-100 on the other subwords) and its characters' ids (1: unknown);
    `sid` and `offset` say which sentence and first word the window is."""
    sentences = [list(s) for s in sentences]
    nonempty = [s for s in sentences if s]
    enc = tok(nonempty, is_split_into_words=True, add_special_tokens=False) if nonempty else None
    limit, k, rows = max_len - 2, 0, []
    for sid, words in enumerate(sentences):
        if not words:
            continue
        pieces = [[] for _ in words]
        for piece, w in zip(enc["input_ids"][k], enc.word_ids(k)):
            pieces[w].append(piece)
        k += 1
        pieces = [p[:limit] or [tok.unk_token_id] for p in pieces]  # only the first piece is read
        for lo, hi in split_windows(pieces, limit):
            ids, starts, labels = [tok.cls_token_id], [], [IGNORE]
            for w in range(lo, hi):
                starts.append(len(ids))
                labels += [tags[sid][w] if tags else IGNORE] + [IGNORE] * (len(pieces[w]) - 1)
                ids += pieces[w]
            row = {"input_ids": ids + [tok.sep_token_id], "word_starts": starts, "sid": sid, "offset": lo,
                   "chars": [[chars.get(c, 1) for c in w[:max_word_chars]] for w in words[lo:hi]]}
            rows.append(row if tags is None else {**row, "labels": labels + [IGNORE]})
    return rows


class Collate:
    """Pad windows into a batch: input_ids, attention_mask, word_starts (0: no word), labels (-100), the characters
    of each word (0) and, with `ids`, which sentence and first word each window is (to stitch windows back)."""

    def __init__(self, tok: PreTrainedTokenizerFast, chars: bool = True, ids: bool = False):
        self.pad, self.chars, self.ids = tok.pad_token_id, chars, ids

    def __call__(self, rows: list[dict]) -> dict:
        def pad(key: str, value: int) -> torch.Tensor:
            return pad_sequence([torch.tensor(r[key]) for r in rows], batch_first=True, padding_value=value)

        batch = {"input_ids": pad("input_ids", self.pad), "word_starts": pad("word_starts", 0)}
        lengths = torch.tensor([len(r["input_ids"]) for r in rows])
        batch["attention_mask"] = (torch.arange(batch["input_ids"].size(1)) < lengths[:, None]).long()
        if "labels" in rows[0]:
            batch["labels"] = pad("labels", IGNORE)
        if self.chars:
            C = max(1, max(len(c) for r in rows for c in r["chars"]))
            batch["chars"] = torch.zeros(*batch["word_starts"].shape, C, dtype=torch.long)
            for i, r in enumerate(rows):
                for j, c in enumerate(r["chars"]):
                    batch["chars"][i, j, : len(c)] = torch.tensor(c)
        if self.ids:
            batch["sid"], batch["offset"] = (torch.tensor([r[k] for r in rows]) for k in ("sid", "offset"))
        return batch


def stitch(records: list) -> tuple[list[list[int]], ...]:
    """Join each sentence's windows back in word order: records (sid, offset, seq_1, ..., seq_n) of windows in any
    order -> n lists with one joined sequence per sentence, by sentence id."""
    by_sentence = defaultdict(list)
    for sid, offset, *seqs in records:
        by_sentence[sid].append((offset, seqs))
    joined = [[sum(part, []) for part in zip(*(seqs for _, seqs in sorted(by_sentence[sid], key=lambda x: x[0])))]
              for sid in sorted(by_sentence)]
    return tuple([row[i] for row in joined] for i in range(len(records[0]) - 2 if records else 1))


def decode(model, batch: dict) -> tuple[list[list[int]], list[list[int]]]:
    """Tag ids per window over its words (`core.tagging` model): its decoder's, and the per-word argmax."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "word_starts", "chars") if k in batch}
    out = model(**inputs)
    head = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return head.decode(out), head.decode(out, constrained=False)
