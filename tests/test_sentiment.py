"""The sentiment task's own pieces: word dropout and label handling."""

import json

import pytest
import torch
from transformers import DataCollatorWithPadding

from core.task import UserError, load_task
from core.tokenizer import train_tokenizer
from tasks.sentiment import TokenDropout
from tests.conftest import write_sst2
from tests.test_train import compose_cfg


def test_token_dropout_hits_only_real_tokens_at_the_given_rate():
    tok = train_tokenizer(["the film was good", "the plot was bad"] * 20, vocab_size=60)
    rows = [tok("the film was good the plot was bad " * 8) for _ in range(64)]
    torch.manual_seed(0)
    batch = TokenDropout(DataCollatorWithPadding(tok), 0.25, tok)(rows)
    ids, clean = batch["input_ids"], DataCollatorWithPadding(tok)(rows)["input_ids"]
    changed = ids != clean
    assert (ids[changed] == tok.unk_token_id).all()
    assert (ids[:, 0] == tok.cls_token_id).all() and (ids[:, -1] == tok.sep_token_id).all()
    assert 0.2 < changed.float().mean() < 0.3


def test_string_labels_and_unknown_labels(tmp_path):
    folder = write_sst2(tmp_path)
    for split in ("train", "validation", "test"):
        path = folder / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for r in rows:
            r["label"] = ["neg", "pos"][r["label"]]
        if split == "test":
            rows[0]["label"] = "neutral"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task(compose_cfg("task=sentiment", "model=tiny", "task.vocab_size=100", f"data.root={tmp_path}"))
    with pytest.raises(UserError, match="'neutral' is not one of the training labels"):
        task.prepare(tmp_path, is_main=True)
    assert task.labels == ["neg", "pos"]


def test_wordpiece_vocabulary_is_the_same_on_every_fit():
    """The library's WordPiece trainer gives a different vocabulary from run to run on ties (tokenizers#1794); a
    seeded run must start from the same tokens, so the vocabulary is learnt by its deterministic BPE trainer."""
    texts = [" ".join(f"w{(i * 7 + j * 3) % 23}x{j % 5}" for j in range(8)) for i in range(60)]  # many equal counts
    vocabs = [train_tokenizer(texts, vocab_size=120).get_vocab() for _ in range(4)]
    assert all(v == vocabs[0] for v in vocabs)
    tok = train_tokenizer(texts, vocab_size=120)
    assert tok.decode(tok(texts[0])["input_ids"], skip_special_tokens=True) == texts[0]
    assert tok.unk_token_id not in tok("w5x1 w99x9")["input_ids"]  # unseen words still split into known pieces
