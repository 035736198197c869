"""Text for every task that reads it: subword tokenizers fitted on a task's training split with the `tokenizers`
library (saved as transformers' tokenizer files), and word dropout."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from core.task import UserError

SPECIAL = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
           "mask_token": "[MASK]", "bos_token": "[BOS]", "eos_token": "[EOS]"}


def train_tokenizer(texts: Iterable[str], vocab_size: int, kind: str = "wordpiece", lowercase: bool = False,
                    min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Fit a WordPiece (classification, tagging) or Metaspace-BPE (generation, detokenises exactly) vocabulary.

    Encodings come out as `[CLS] text [SEP]`; generation tasks add [BOS]/[EOS] themselves.
    """
    norm = normalizers.Sequence([normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else []))
    specials = list(SPECIAL.values())
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(wordpiece_vocab(texts, vocab_size, norm, specials, min_frequency),
                                         unk_token=SPECIAL["unk_token"]))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.normalizer = norm
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
        # line breaks (dialogue turns) are tokens of their own: no merge may span "pizza.\nBen:"
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", behavior="isolated"),
                                                     pre_tokenizers.Metaspace()])
        tok.decoder = decoders.Metaspace()
        tok.normalizer = norm
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                                           special_tokens=specials))
    else:
        raise ValueError(f"tokenizer kind {kind!r}: choose wordpiece or bpe")
    cls, sep = SPECIAL["cls_token"], SPECIAL["sep_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def checkpoint_tokenizer(folder, max_len: int, fast: bool = True) -> PreTrainedTokenizerFast:
    """A published checkpoint's own tokenizer (its embedding was trained on that vocabulary), cut at `max_len`;
    `fast`: only a Rust one will do (the tagging task reads word ids from it)."""
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except ImportError as e:  # Marian's SentencePiece tokenizer without the sentencepiece package
        raise UserError(f"the checkpoint's tokenizer in {folder} needs a package that is missing "
                        f"({str(e).splitlines()[0]}); pip install it") from None
    except (OSError, ValueError) as e:
        raise UserError(f"the checkpoint in {folder} has no readable tokenizer ({str(e).splitlines()[0]}); give a "
                        "folder with tokenizer.json (or vocab.txt)") from None
    if fast and not tok.is_fast:
        raise UserError(f"the checkpoint's tokenizer in {folder} has no fast (Rust) version; the suite needs one")
    tok.model_max_length = max_len
    return tok


def wordpiece_vocab(texts: Iterable[str], vocab_size: int, norm, specials: list[str], min_frequency: int) -> dict:
    """A WordPiece vocabulary that is the same on every run for the same data.

    The library's WordPieceTrainer numbers its "##" pieces in hash-map order, and on count ties that order picks the
    merges, so each run gets a slightly different vocabulary (huggingface/tokenizers#1794). Its BPE trainer without a
    continuing-subword prefix is deterministic: learn the pieces with it on words marked by a leading "▁", then name
    them WordPiece's way ("▁film" -> "film", "ing" -> "##ing"), every character in both forms.
    """
    bpe = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    bpe.normalizer = norm
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Metaspace()])
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                                       special_tokens=specials))
    pieces = dict.fromkeys(specials)
    for piece in sorted(bpe.get_vocab(), key=bpe.token_to_id):
        if piece in specials or piece == "▁":
            continue
        if piece.startswith("▁"):
            pieces[piece[1:]] = None
        else:
            pieces[f"##{piece}"] = None
            if len(piece) == 1:  # a character can start a word too
                pieces[piece] = None
    return {piece: i for i, piece in enumerate(pieces)}


class TokenDropout:
    """Collate, then replace each real token by [UNK] with probability p: word dropout, a regulariser for small
    text sets trained from scratch (the model cannot lean on any single word). Special tokens and padding stay."""

    def __init__(self, collate: Callable[[list[dict]], dict], p: float, tokenizer: PreTrainedTokenizerFast):
        self.collate, self.p = collate, p
        self.unk, self.specials = tokenizer.unk_token_id, torch.tensor(tokenizer.all_special_ids)

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.collate(rows)
        ids = batch["input_ids"]
        drop = (torch.rand(ids.shape) < self.p) & ~torch.isin(ids, self.specials)
        batch["input_ids"] = ids.masked_fill(drop, self.unk)
        return batch
