"""Named-entity recognition (CoNLL-2003 by default): its data, its metric (seqeval) and its predictions.

The model is the shared token-classification head (`core.tagging`): subwords (+ a char-CNN per word) -> the shared
encoder -> per-word tag scores -> softmax, constrained Viterbi or CRF decoding. Alignment follows the transformers
token-classification examples: a word's tag sits on its first subword, the other subwords carry -100; every loss,
decode and score is over words, never over subword pieces (which would inflate F1).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import ClassLabel, DatasetDict
from seqeval.metrics import classification_report, f1_score
from seqeval.metrics.sequence_labeling import get_entities
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast
from transformers.trainer_pt_utils import LengthGroupedSampler

from core import task as base
from core.attention_plots import last_layer, token_heatmap
from core.data import load_splits
from core.tagging import DECODERS, SuiteForTokenClassification
from core.text import TokenDropout, checkpoint_tokenizer, train_tokenizer
from core.transformer import record_attention
from core.words import Collate, decode, stitch, to_iob2, word_windows

log = logging.getLogger(__name__)
# Words of raw text for predict mode, close to CoNLL's tokenisation: abbreviations (U.S.), words and numbers with
# inner hyphens/dots/commas (1996-08-22, 1,000.5), then any single other symbol.
WORD_RE = re.compile(r"(?:[A-Za-z]\.){2,}|\w+(?:[-.,/]\w+)*|'\w+|[^\w\s]")


@dataclass
class Config:
    """The `task` group of conf/task/ner.yaml."""

    name: str = "ner"
    vocab_size: int = 16000  # cased WordPiece vocabulary fitted on the training split's words
    max_len: int = 256  # subwords per window incl. [CLS]/[SEP]; longer sentences are split into windows
    decoder: str = "crf"  # argmax | constrained (Viterbi over IOB2-legal tag paths) | crf (learned transitions)
    char_features: bool = True  # a char-CNN per word, added to the word's first subword embedding
    char_dim: int = 32  # char-CNN character embedding width
    char_filters: int = 128  # char-CNN filters
    max_word_chars: int = 20  # characters of a word the char-CNN reads
    word_dropout: float = 0.3  # training only: each subword replaced by [UNK] with this probability
    tag_names: list[str] | None = None  # names of integer tags 0..n-1 when the data has no ClassLabel names

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"task.decoder={self.decoder!r}: choose one of {', '.join(DECODERS)}")
        for name, least in (("vocab_size", 16), ("max_len", 3), ("char_dim", 1), ("char_filters", 1),
                            ("max_word_chars", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"task.{name}={getattr(self, name)}: give at least {least}")
        if not 0 <= self.word_dropout < 1:
            raise ValueError(f"task.word_dropout={self.word_dropout}: give a probability in [0, 1)")


class Task(base.Task):
    """Token classification; metrics from seqeval in percent: `f1`, `precision`, `recall`, and per entity type."""

    metric = "f1"
    head = SuiteForTokenClassification
    Config = Config

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.labels: list[str] = []
        self.chars: dict[str, int] = {}  # character -> id; 0 padding, 1 unknown
        self.data: dict[str, list[dict]] = {}

    fine_tunes = True  # prepare() takes the checkpoint's tokenizer under model.pretrained

    # -- data --------------------------------------------------------------------------------------------------------
    def prepare(self, run_dir: Path, is_main: bool) -> None:
        ds = load_splits(self.cfg.data)
        tags = {split: self._read_tags(ds, split) for split in ds}
        types = sorted({t[2:] for row in tags["train"] for t in row if t != "O"})  # the same on every rank
        self.labels = ["O"] + [f"{p}-{t}" for t in types for p in "BI"]
        self.chars = {c: i + 2 for i, c in enumerate(sorted({c for s in ds["train"]["tokens"] for w in s for c in w}))}
        if is_main and self.checkpoint is not None:  # model.pretrained: its own vocabulary (the char-CNN keeps case)
            max_len = min(self.config.max_len, self.checkpoint.fields["max_len"])
            self.tokenizer = checkpoint_tokenizer(self.checkpoint.folder, max_len)
            self.tokenizer.save_pretrained(run_dir)
        elif is_main:  # case kept: capitalisation is the strongest cue for names
            self.tokenizer = train_tokenizer((" ".join(s) for s in ds["train"]["tokens"]), self.config.vocab_size,
                                             "wordpiece", lowercase=False)
            self.tokenizer.model_max_length = self.config.max_len
            self.tokenizer.save_pretrained(run_dir)
        else:  # the main process has fitted and saved it
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(run_dir)
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
        inner = getattr(ds[split].features["tags"], "feature", None)  # Sequence/List(ClassLabel), by version
        names = inner.names if isinstance(inner, ClassLabel) else self.config.tag_names
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

    def rows(self, sentences: list[list[str]], tags: list[list[int]] | None = None) -> list[dict]:
        """Model inputs per window of each sentence: [CLS] subwords [SEP], a word's tag on its first subword."""
        return word_windows(self.tokenizer, sentences, tags, self.config.max_len, self.chars,
                            self.config.max_word_chars)

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        if split not in self.data:
            return None
        rows, t, tc = self.data[split], self.cfg.trainer, self.config
        lengths = [len(r["input_ids"]) for r in rows]
        collate = Collate(self.tokenizer, tc.char_features, ids=not train)
        if train and tc.word_dropout:  # the char-CNN still sees the word: names unseen in training are spelt out
            collate = TokenDropout(collate, tc.word_dropout, self.tokenizer)
        if train:  # batches of similar lengths, in random order: far less padding than plain shuffling
            sampler = LengthGroupedSampler(t.batch_size, lengths=lengths)
        else:
            sampler = sorted(range(len(rows)), key=lengths.__getitem__)
        return DataLoader(rows, batch_size=t.batch_size if train else t.eval_batch_size, sampler=sampler,
                          collate_fn=collate, num_workers=t.num_workers, drop_last=train)

    # -- model and metrics -------------------------------------------------------------------------------------------
    def model_fields(self) -> dict:
        tc, tok = self.config, self.tokenizer
        chars = {"char_vocab_size": len(self.chars) + 2, "char_dim": tc.char_dim, "char_filters": tc.char_filters,
                 "max_word_chars": tc.max_word_chars} if tc.char_features else {}
        return {"stem": "text", "vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "tag_decoder": tc.decoder,
                "id2label": dict(enumerate(self.labels)), **chars}

    def build_model(self) -> SuiteForTokenClassification:
        model = super().build_model()
        tok = self.tokenizer
        model.index_vocabulary(tok.get_vocab(), tok.all_special_tokens, tok.unk_token, "".join(self.chars))
        return model

    def eval_step(self, model, batch) -> list:
        """Per window: (sentence, first word, decoded tags, argmax tags, gold tags), all over words."""
        pred, greedy = decode(model, batch)
        gold = batch["labels"].gather(1, batch["word_starts"]).tolist()
        return [(s, o, p, g, y[: len(p)]) for s, o, p, g, y in
                zip(batch["sid"].tolist(), batch["offset"].tolist(), pred, greedy, gold)]

    def compute_metrics(self, records: list) -> dict[str, float]:
        pred, greedy, gold = ([[self.labels[t] for t in row] for row in seqs] for seqs in stitch(records))
        report = classification_report(gold, pred, output_dict=True, zero_division=0)  # conlleval's counting
        metrics = {}
        for kind, prefix in [("micro avg", "")] + [(k, f"{k}_") for k in sorted(report) if not k.endswith(" avg")]:
            for key in ("f1", "precision", "recall"):
                metrics[prefix + key] = 100 * float(report[kind]["f1-score" if key == "f1" else key])
        if self.config.decoder != "argmax":  # what the Viterbi / CRF decoding adds over per-word argmax
            metrics["f1_argmax"] = 100 * float(f1_score(gold, greedy))
        return metrics

    # -- prediction --------------------------------------------------------------------------------------------------
    def load_assets(self, run_dir: Path) -> None:
        try:
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(run_dir)
            id2label = json.loads((run_dir / "config.json").read_text())["id2label"]
            self.labels = [id2label[str(i)] for i in range(len(id2label))]
        except (OSError, ValueError, KeyError) as e:
            raise base.UserError(f"{run_dir} lacks a readable tokenizer or config.json with id2label ({e})") from None

    def load_model(self, run_dir: Path) -> SuiteForTokenClassification:
        model = super().load_model(run_dir)
        self.chars = model.vocab.char_map()  # the char-CNN's characters travel with its weights
        return model

    @torch.no_grad()
    def tag(self, model, sentences: list[list[str]]) -> list[list[str]]:
        """Tags of each sentence's words, by the model's own decoder (Viterbi for constrained and crf)."""
        rows, collate, records = self.rows(sentences), Collate(self.tokenizer, self.config.char_features, True), []
        for start in range(0, len(rows), 64):
            batch = collate(rows[start : start + 64])
            pred, _ = decode(model, batch)
            records += list(zip(batch["sid"].tolist(), batch["offset"].tolist(), pred, pred, pred))
        tagged = dict(zip(sorted({r[0] for r in records}), stitch(records)[0]))
        return [[self.labels[t] for t in tagged.get(i, [])] for i in range(len(sentences))]

    def predict(self, model, inputs: list[str]) -> list[str]:
        """`text<TAB>TYPE start:end surface; ...` per input, character spans end-exclusive as Python slices."""
        words = [[(m.group(), m.start(), m.end()) for m in WORD_RE.finditer(text)] for text in inputs]
        lines = []
        for text, ws, tags in zip(inputs, words, self.tag(model, [[w for w, _, _ in ws] for ws in words])):
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
            (tags,), _ = decode(model, Collate(self.tokenizer, self.config.char_features)([row]))
        tokens = self.tokenizer.convert_ids_to_tokens(row["input_ids"])
        tagged = list(tokens)
        for start, tag in zip(row["word_starts"], tags):
            tagged[start] = f"{tokens[start]}  {self.labels[tag]}"
        title = "last encoder layer's self-attention (mean over heads); predicted tags beside the words"
        return token_heatmap(last_layer(records), tagged, tokens, title, path)

