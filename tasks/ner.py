"""Named-entity recognition (CoNLL-2003 by default): subwords (+ a char-CNN per word) -> shared encoder -> per-word
tag scores -> softmax, constrained Viterbi or CRF decoding; scored per entity with seqeval, on words only.

Alignment follows the transformers token-classification examples: a word's tag sits on its first subword, the
other subwords carry -100. The model reads the encoder output at each word's first subword, so every loss, decode
and score is over words, never over subword pieces (which would inflate F1).
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import ClassLabel, DatasetDict
from seqeval.metrics import classification_report, f1_score
from seqeval.metrics.sequence_labeling import get_entities
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast
from transformers.trainer_pt_utils import LengthGroupedSampler

from core import task as base
from core.attention import last_layer, token_heatmap
from core.data import load_splits
from core.tokenizer import train_tokenizer
from core.transformer import Encoder, TokenEmbedding, TransformerConfig, init_weights, record_attention

log = logging.getLogger(__name__)
IGNORE = -100  # label of non-first subwords and padding (cross_entropy's ignore_index)
# Words of raw text for predict mode, close to CoNLL's tokenisation: abbreviations (U.S.), words and numbers with
# inner hyphens/dots/commas (1996-08-22, 1,000.5), then any single other symbol.
WORD_RE = re.compile(r"(?:[A-Za-z]\.){2,}|\w+(?:[-.,/]\w+)*|'\w+|[^\w\s]")


# -- tags --------------------------------------------------------------------------------------------------------


def to_iob2(tags: list[str]) -> list[str]:
    """IOB1 -> IOB2 (an entity starting with I- gets B-); IOB2 comes back unchanged."""
    out = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and (i == 0 or out[-1] == "O" or out[-1][2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
    return out


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
    paths = []
    for b, n in enumerate(mask.sum(1).tolist()):
        tag = int(score[b].argmax())
        path = [tag]
        for w in range(n - 1, 0, -1):
            tag = int(back[w - 1][b, tag])
            path.append(tag)
        paths.append(path[::-1])
    return paths


class SoftmaxTags(nn.Module):
    """Independent per-word softmax; decoded by argmax, or by Viterbi over the IOB2-legal paths (`constrained`)."""

    def __init__(self, allowed: torch.Tensor, start: torch.Tensor, constrained: bool):
        super().__init__()
        self.constrained = constrained
        self.register_buffer("trans", (~allowed).float() * -1e4, persistent=False)
        self.register_buffer("start", (~start).float() * -1e4, persistent=False)

    def loss(self, scores, tags, mask):
        return F.cross_entropy(scores.transpose(1, 2), tags, ignore_index=IGNORE)

    def decode(self, scores, mask, constrained: bool | None = None) -> list[list[int]]:
        if not (self.constrained if constrained is None else constrained):
            return [row[:n] for row, n in zip(scores.argmax(-1).tolist(), mask.sum(1).tolist())]
        return viterbi(scores.log_softmax(-1), mask, self.trans, self.start)


class CRF(SoftmaxTags):
    """Linear-chain CRF (Lample et al., 2016) with learned transitions and start scores (no end scores, to stay
    compact); illegal IOB2 moves stay forbidden."""

    def __init__(self, allowed: torch.Tensor, start: torch.Tensor, constrained: bool = True):
        super().__init__(allowed, start, constrained)
        L = len(allowed)
        self.learned_trans, self.learned_start = nn.Parameter(torch.zeros(L, L)), nn.Parameter(torch.zeros(L))

    def loss(self, scores, tags, mask):
        """Negative log-likelihood of the gold paths per word: log Z - score(gold)."""
        trans, start = self.learned_trans + self.trans, self.learned_start + self.start
        gold_tags = tags.clamp(min=0)  # (B, W), padding points at tag 0 and is masked out
        gold = start[gold_tags[:, 0]] + (scores.gather(2, gold_tags[..., None]).squeeze(-1) * mask).sum(1)
        gold = gold + (trans[gold_tags[:, :-1], gold_tags[:, 1:]] * mask[:, 1:]).sum(1)
        alpha = start + scores[:, 0]  # (B, L) log-sum of all paths ending in each tag
        for w in range(1, scores.size(1)):
            nxt = torch.logsumexp(alpha[:, :, None] + trans, dim=1) + scores[:, w]
            alpha = torch.where(mask[:, w, None], nxt, alpha)
        return (torch.logsumexp(alpha, -1) - gold).sum() / mask.sum()

    def decode(self, scores, mask, constrained: bool | None = None) -> list[list[int]]:
        if constrained is False:  # the emissions alone, to show what the transitions add
            return super().decode(scores, mask, constrained=False)
        return viterbi(scores, mask, self.learned_trans + self.trans, self.learned_start + self.start)


# -- model -------------------------------------------------------------------------------------------------------


class CharCNN(nn.Module):
    """Characters of each word -> embedding -> conv (width 3) -> max over the word -> D (Ma & Hovy, 2016)."""

    def __init__(self, n_chars: int, d_model: int, char_dim: int = 32, filters: int = 128):
        super().__init__()
        self.embed = nn.Embedding(n_chars, char_dim, padding_idx=0)
        self.conv = nn.Conv1d(char_dim, filters, kernel_size=3, padding=1)
        self.proj = nn.Linear(filters, d_model)

    def forward(self, chars):  # (B, W, C) char ids, 0 = padding
        B, W, C = chars.shape
        x = self.embed(chars.view(B * W, C)).transpose(1, 2)  # (B*W, char_dim, C)
        x = self.conv(x).masked_fill((chars.view(B * W, 1, C) == 0), -1e4).amax(-1)  # (B*W, filters)
        return self.proj(torch.relu(x)).view(B, W, -1)  # (B, W, D)


class TokenTagger(nn.Module):
    """Subword embedding (+ char-CNN at each word's first subword) -> shared encoder -> per-word linear scores."""

    def __init__(self, cfg: TransformerConfig, vocab_size: int, pad_id: int, tags: SoftmaxTags,
                 chars: CharCNN | None = None):
        super().__init__()
        self.embed = TokenEmbedding(vocab_size, cfg.d_model, padding_idx=pad_id)
        self.chars = chars
        self.encoder = Encoder(cfg)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.d_model, len(tags.start)))
        self.tags = tags
        init_weights(self.encoder)

    def forward(self, input_ids, attention_mask, word_starts, chars=None, labels=None) -> dict:
        """word_starts (B, W): position of each word's first subword (0 = no word, [CLS] sits there)."""
        x = self.embed(input_ids)  # (B, S, D)
        words = word_starts > 0  # (B, W)
        index = word_starts[..., None].expand(-1, -1, x.size(-1))  # (B, W, D)
        if self.chars is not None:
            c = self.chars(chars) * words[..., None]
            x = x.scatter_add(1, index, c.to(x.dtype))
        h = self.encoder(x, attention_mask.bool())  # (B, S, D)
        scores = self.head(h.gather(1, index)).float()  # (B, W, L)
        out = {"scores": scores, "word_mask": words}
        if labels is not None:
            tags = labels.gather(1, word_starts).masked_fill(~words, IGNORE)  # (B, W) the first subwords' labels
            out["loss"] = self.tags.loss(scores, tags, words)
        return out


# -- data --------------------------------------------------------------------------------------------------------


def split_windows(pieces: list[list[int]], limit: int) -> list[tuple[int, int]]:
    """Word ranges [lo, hi) whose subwords fit in `limit`: a long sentence becomes consecutive windows, none lost."""
    out, lo, used = [], 0, 0
    for i, p in enumerate(pieces):
        if used + len(p) > limit and i > lo:
            out.append((lo, i))
            lo, used = i, 0
        used += len(p)
    return out + [(lo, len(pieces))]


class Collate:
    """Pad windows into a batch; in training, replace subwords by [UNK] with probability `word_dropout` (the
    char-CNN still sees the word, so the model learns to use spelling for words it rarely sees)."""

    def __init__(self, tok: PreTrainedTokenizerFast, word_dropout: float = 0.0, chars: bool = True,
                 ids: bool = False):
        self.pad, self.unk, self.specials = tok.pad_token_id, tok.unk_token_id, [tok.cls_token_id, tok.sep_token_id]
        self.word_dropout, self.chars, self.ids = word_dropout, chars, ids

    def __call__(self, rows: list[dict]) -> dict:
        B, S, W = len(rows), max(len(r["input_ids"]) for r in rows), max(len(r["word_starts"]) for r in rows)
        batch = {"input_ids": torch.full((B, S), self.pad), "attention_mask": torch.zeros(B, S, dtype=torch.long),
                 "word_starts": torch.zeros(B, W, dtype=torch.long)}
        if "labels" in rows[0]:
            batch["labels"] = torch.full((B, S), IGNORE)
        if self.chars:
            batch["chars"] = torch.zeros(B, W, max(len(c) for r in rows for c in r["chars"]), dtype=torch.long)
        for i, r in enumerate(rows):
            n, w = len(r["input_ids"]), len(r["word_starts"])
            batch["input_ids"][i, :n] = torch.tensor(r["input_ids"])
            batch["attention_mask"][i, :n] = 1
            batch["word_starts"][i, :w] = torch.tensor(r["word_starts"])
            if "labels" in batch:
                batch["labels"][i, :n] = torch.tensor(r["labels"])
            for j, c in enumerate(r["chars"] if self.chars else []):
                batch["chars"][i, j, : len(c)] = torch.tensor(c)
        if self.word_dropout:
            ids = batch["input_ids"]
            real = batch["attention_mask"].bool() & ~torch.isin(ids, torch.tensor(self.specials))
            batch["input_ids"] = ids.masked_fill(real & (torch.rand(B, S) < self.word_dropout), self.unk)
        if self.ids:  # eval: which sentence and word offset each window covers, to stitch windows back
            batch["sid"] = torch.tensor([r["sid"] for r in rows])
            batch["offset"] = torch.tensor([r["offset"] for r in rows])
        return batch


class Task(base.Task):
    """Token classification; metrics from seqeval in percent: `f1`, `precision`, `recall`, and per entity type."""

    metric = "f1"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.labels: list[str] = []
        self.chars: dict[str, int] = {}  # character -> id; 0 padding, 1 unknown
        self.data: dict[str, list[dict]] = {}

    # -- data --------------------------------------------------------------------------------------------------------
    def prepare(self, run_dir: Path, is_main: bool) -> None:
        ds = load_splits(self.cfg.data)
        tags = {split: self._read_tags(ds, split) for split in ds}
        if is_main:
            self._fit_assets(ds["train"]["tokens"], tags["train"])
            self.tokenizer.save_pretrained(run_dir)
            (run_dir / "labels.json").write_text(json.dumps(self.labels))
            (run_dir / "chars.json").write_text(json.dumps(self.chars, ensure_ascii=False))
        else:
            self.load_assets(run_dir)
        index = {t: i for i, t in enumerate(self.labels)}
        for split in ds:
            for i, row in enumerate(tags[split]):
                for tag in row:
                    if tag not in index:
                        raise base.UserError(f"{self._where(split, i)}: tag {tag!r} is outside the label set read "
                                             f"from the training data ({' '.join(self.labels)})")
            self.data[split] = self.rows(ds[split]["tokens"], [[index[t] for t in row] for row in tags[split]])
        log.info("windows per split: %s", {s: len(r) for s, r in self.data.items()})

    def _where(self, split: str, i: int) -> str:
        """Where row i of a split is, for error messages: a line of the local file, else a row of the Hub split."""
        if self.cfg.data.get("root"):
            return f"{self.cfg.data.dir}/{self.cfg.data.files[split]} line {i + 1}"
        return f"{split} split row {i}"

    def _read_tags(self, ds: DatasetDict, split: str) -> list[list[str]]:
        """Tag strings per sentence, IOB1 or IOB2 in, IOB2 out; integer tags are named by the data or the config."""
        feature = ds[split].features["tags"]
        inner = getattr(feature, "feature", None)  # Sequence(ClassLabel) or List(ClassLabel), by datasets version
        names = inner.names if isinstance(inner, ClassLabel) else self.cfg.task.get("tag_names")
        out = []
        for i, (words, row) in enumerate(zip(ds[split]["tokens"], ds[split]["tags"])):
            if len(words) != len(row):
                raise base.UserError(f"{self._where(split, i)}: {len(words)} tokens but {len(row)} tags")
            if row and isinstance(row[0], int):
                if not names or max(row) >= len(names) or min(row) < 0:
                    raise base.UserError(f"{self._where(split, i)}: integer tags {row} need names: set "
                                         f"task.tag_names=[O,B-PER,...] (tag id -> name)")
                row = [names[t] for t in row]
            for tag in row:
                if not re.fullmatch(r"O|[BI]-\S+", str(tag)):
                    raise base.UserError(f"{self._where(split, i)}: tag {tag!r} is not O, B-<type> or I-<type> "
                                         f"(IOB or IOB2 tags are expected)")
            out.append(to_iob2(list(row)))
        return out

    def _fit_assets(self, sentences: list[list[str]], tags: list[list[str]]) -> None:
        """Label set and characters from the training split; a cased WordPiece vocabulary trained on its words."""
        types = sorted({t[2:] for row in tags for t in row if t != "O"})
        self.labels = ["O"] + [f"{p}-{t}" for t in types for p in "BI"]
        self.chars = {c: i + 2 for i, c in enumerate(sorted({c for s in sentences for w in s for c in w}))}
        tc = self.cfg.task  # case kept: capitalisation is the strongest cue for names
        self.tokenizer = train_tokenizer((" ".join(s) for s in sentences), tc.vocab_size, "wordpiece", lowercase=False)
        self.tokenizer.model_max_length = tc.max_len

    def rows(self, sentences: list[list[str]], tags: list[list[int]] | None = None) -> list[dict]:
        """Model inputs per window of each sentence: [CLS] subwords [SEP], a word's tag on its first subword."""
        sentences = [list(s) for s in sentences]
        nonempty = [s for s in sentences if s]
        enc = self.tokenizer(nonempty, is_split_into_words=True, add_special_tokens=False) if nonempty else None
        limit, k, rows = self.cfg.task.max_len - 2, 0, []
        for sid, words in enumerate(sentences):
            if not words:
                continue
            pieces = [[] for _ in words]
            for piece, w in zip(enc["input_ids"][k], enc.word_ids(k)):
                pieces[w].append(piece)
            k += 1
            pieces = [p[:limit] or [self.tokenizer.unk_token_id] for p in pieces]  # only the first piece is read
            for lo, hi in split_windows(pieces, limit):
                ids, starts, labels = [self.tokenizer.cls_token_id], [], [IGNORE]
                for w in range(lo, hi):
                    starts.append(len(ids))
                    labels += [tags[sid][w] if tags else IGNORE] + [IGNORE] * (len(pieces[w]) - 1)
                    ids += pieces[w]
                ids.append(self.tokenizer.sep_token_id)
                row = {"input_ids": ids, "word_starts": starts, "sid": sid, "offset": lo,
                       "chars": [[self.chars.get(c, 1) for c in w[: self.cfg.task.max_word_chars]]
                                 for w in words[lo:hi]]}
                rows.append(row if tags is None else {**row, "labels": labels + [IGNORE]})
        return rows

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        if split not in self.data:
            return None
        rows, t, tc = self.data[split], self.cfg.trainer, self.cfg.task
        lengths = [len(r["input_ids"]) for r in rows]
        collate = Collate(self.tokenizer, tc.word_dropout if train else 0.0, tc.char_features, ids=not train)
        if train:  # batches of similar lengths, in random order: far less padding than plain shuffling
            sampler = LengthGroupedSampler(t.batch_size, lengths=lengths)
        else:
            sampler = sorted(range(len(rows)), key=lengths.__getitem__)
        return DataLoader(rows, batch_size=t.batch_size if train else t.eval_batch_size, sampler=sampler,
                          collate_fn=collate, num_workers=t.num_workers, drop_last=train)

    # -- model and metrics -------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        tc = self.cfg.task
        if tc.decoder not in ("argmax", "constrained", "crf"):
            raise base.UserError(f"task.decoder={tc.decoder!r}: choose argmax, constrained or crf")
        allowed, start = transition_rules(self.labels)
        tags = CRF(allowed, start) if tc.decoder == "crf" else SoftmaxTags(allowed, start, tc.decoder == "constrained")
        D = self.model_cfg.d_model
        chars = CharCNN(len(self.chars) + 2, D, tc.char_dim, tc.char_filters) if tc.char_features else None
        return TokenTagger(self.model_cfg, len(self.tokenizer), self.tokenizer.pad_token_id, tags, chars)

    def model_extras(self) -> dict:
        tc = self.cfg.task
        return {"vocab_size": len(self.tokenizer), "labels": self.labels, "decoder": tc.decoder,
                "char_features": tc.char_features}

    def eval_step(self, model, batch) -> list:
        """Per window: (sentence, first word, decoded tags, argmax tags, gold tags), all over words."""
        pred, greedy = self._decode(model, batch)
        gold = batch["labels"].gather(1, batch["word_starts"]).tolist()
        return [(s, o, p, g, y[: len(p)]) for s, o, p, g, y in
                zip(batch["sid"].tolist(), batch["offset"].tolist(), pred, greedy, gold)]

    @staticmethod
    def _decode(model, batch) -> tuple[list[list[int]], list[list[int]]]:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    word_starts=batch["word_starts"], chars=batch.get("chars"))
        tags = getattr(model, "module", model).tags  # unwrap DistributedDataParallel
        return (tags.decode(out["scores"], out["word_mask"]),
                tags.decode(out["scores"], out["word_mask"], constrained=False))

    def compute_metrics(self, records: list) -> dict[str, float]:
        pred, greedy, gold = ([[self.labels[t] for t in row] for row in seqs] for seqs in stitch(records))
        report = classification_report(gold, pred, output_dict=True, zero_division=0)  # conlleval's counting
        metrics = {}
        for kind, prefix in [("micro avg", "")] + [(k, f"{k}_") for k in sorted(report) if not k.endswith(" avg")]:
            for key in ("f1", "precision", "recall"):
                metrics[prefix + key] = 100 * float(report[kind]["f1-score" if key == "f1" else key])
        if self.cfg.task.decoder != "argmax":  # what the Viterbi / CRF decoding adds over per-word argmax
            metrics["f1_argmax"] = 100 * float(f1_score(gold, greedy))
        return metrics

    # -- prediction --------------------------------------------------------------------------------------------------
    def load_assets(self, run_dir: Path) -> None:
        try:
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(run_dir)
            self.labels = json.loads((run_dir / "labels.json").read_text())
            self.chars = json.loads((run_dir / "chars.json").read_text())
        except (OSError, ValueError) as e:
            raise base.UserError(f"{run_dir} lacks a readable tokenizer, labels.json or chars.json ({e})") from None

    @torch.no_grad()
    def predict(self, model, inputs: list[str]) -> list[str]:
        """`text<TAB>TYPE start:end surface; ...` per input, character spans end-exclusive as Python slices."""
        words = [[(m.group(), m.start(), m.end()) for m in WORD_RE.finditer(text)] for text in inputs]
        rows = self.rows([[w for w, _, _ in ws] for ws in words])
        collate = Collate(self.tokenizer, chars=self.cfg.task.char_features, ids=True)
        records = []
        for start in range(0, len(rows), 64):
            batch = collate(rows[start : start + 64])
            pred, _ = self._decode(model, batch)
            records += list(zip(batch["sid"].tolist(), batch["offset"].tolist(), pred, pred, pred))
        tagged = dict(zip(sorted({r[0] for r in records}), stitch(records)[0]))
        lines = []
        for sid, (text, ws) in enumerate(zip(inputs, words)):
            tags = [self.labels[t] for t in tagged.get(sid, [])]
            found = [f"{kind} {ws[lo][1]}:{ws[hi][2]} {text[ws[lo][1] : ws[hi][2]]}"
                     for kind, lo, hi in get_entities(tags)]
            lines.append(f"{text}\t{'; '.join(found) if found else '(no entities)'}")
        return lines

    @torch.no_grad()
    def attention(self, model, inputs: list[str] | None, path: Path) -> Path:
        """Token x token self-attention of the last encoder layer (mean over heads), each word's first subword
        labelled with its predicted tag."""
        if inputs is None:  # the first non-empty test sentence
            words = next((list(r) for r in load_splits(self.cfg.data)["test"]["tokens"] if r), [])
        else:
            words = WORD_RE.findall(inputs[0]) if inputs else []
        if not words:
            raise base.UserError('the sentence to draw attention for is empty; give text="..."')
        row = self.rows([words])[0]  # its first window of at most task.max_len subwords
        with record_attention() as records:
            (tags,), _ = self._decode(model, Collate(self.tokenizer, chars=self.cfg.task.char_features)([row]))
        tokens = self.tokenizer.convert_ids_to_tokens(row["input_ids"])
        tagged = list(tokens)
        for start, tag in zip(row["word_starts"], tags):
            tagged[start] = f"{tokens[start]}  {self.labels[tag]}"
        title = "last encoder layer's self-attention (mean over heads); predicted tags beside the words"
        return token_heatmap(last_layer(records), tagged, tokens, title, path)


def stitch(records: list) -> tuple[list[list[int]], ...]:
    """Join each sentence's windows back in word order; returns (decoded, argmax, gold) per sentence by id."""
    by_sentence = defaultdict(list)
    for sid, offset, *seqs in records:
        by_sentence[sid].append((offset, seqs))
    joined = []
    for sid in sorted(by_sentence):
        parts = [seqs for _, seqs in sorted(by_sentence[sid], key=lambda x: x[0])]
        joined.append([sum((p[i] for p in parts), []) for i in range(3)])
    return tuple([row[i] for row in joined] for i in range(3))
