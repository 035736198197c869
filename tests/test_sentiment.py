"""The sentiment task's own pieces: word dropout, label handling and distillation."""

import json

import pytest
import torch
from omegaconf import OmegaConf
from transformers import DataCollatorWithPadding

from core.task import UserError, load_task, save_weights
from core.text import TokenDropout, train_tokenizer
from core.train import param_groups
from tests.conftest import bert_checkpoint, run_suite, write_sst2
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


def _saved_teacher(folder, data_root):
    """An (untrained) sentiment run saved as run.py saves one: config.yaml, tokenizer, labels and weights."""
    cfg = compose_cfg("task=sentiment", "model=tiny", "task.vocab_size=200", f"data.root={data_root}")
    teacher = load_task(cfg)
    folder.mkdir()
    teacher.prepare(folder, is_main=True)
    torch.manual_seed(1)
    model = teacher.build_model().eval()
    save_weights(model, folder)
    OmegaConf.save(cfg, folder / "config.yaml")
    return teacher, model


def test_distillation_targets_are_the_teachers_on_the_students_batch(data_root, tmp_path):
    teachers = [_saved_teacher(tmp_path / f"teacher{i}", data_root)[1] for i in range(2)]
    before = [m.state_dict()["classifier.linear.weight"].clone() for m in teachers]
    student = load_task(compose_cfg("task=sentiment", "model=tiny", "task.vocab_size=200", f"data.root={data_root}",
                                    f"task.teachers=[{tmp_path / 'teacher0'},{tmp_path / 'teacher1'}]",
                                    "task.distill_temperature=2", "task.distill_alpha=0.7", "task.token_dropout=0.3",
                                    "trainer.mixed_precision=no"))
    (tmp_path / "student").mkdir()
    student.prepare(tmp_path / "student", is_main=True)
    assert "teacher_probs" not in student.dataloader("validation", train=False).dataset.column_names

    batch = next(iter(student.dataloader("train", train=True)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (ids == student.tokenizer.unk_token_id).any()  # the teachers see the student's word-dropped input
    with torch.no_grad():
        expected = sum(m(input_ids=ids, attention_mask=mask)["logits"].div(2).softmax(-1) for m in teachers) / 2
    p = batch["teacher_probs"]
    assert torch.allclose(p, expected, atol=1e-6) and torch.allclose(p.sum(-1), torch.ones(len(ids)))
    assert not torch.allclose(p[:, 0], p[0, 0])  # the teachers do tell sentences apart

    model = student.build_model()
    logits = model.eval()(input_ids=ids, attention_mask=mask)["logits"]
    kl = (p * (p.log() - (logits / 2).log_softmax(-1))).sum(-1).mean()
    want = 0.3 * torch.nn.functional.cross_entropy(logits, batch["labels"]) + 0.7 * 4 * kl
    loss = model(**batch)["loss"]
    assert torch.allclose(loss, want, atol=1e-5)
    loss.backward()  # the student learns; the teachers stay frozen
    assert all(q.grad is None for m in teachers for q in m.parameters())
    assert all(torch.equal(m.state_dict()["classifier.linear.weight"], w) for m, w in zip(teachers, before))


def test_a_teacher_that_is_not_a_saved_sentiment_run_is_named(data_root, tmp_path):
    cfg = compose_cfg("task=sentiment", "model=tiny", "task.vocab_size=200", f"data.root={data_root}",
                      f"task.teachers={tmp_path / 'nowhere'}")  # one run, given without brackets
    task = load_task(cfg)
    with pytest.raises(UserError, match="nowhere is not a saved run"):
        task.prepare(tmp_path, is_main=True)
    teacher, _ = _saved_teacher(tmp_path / "teacher", data_root)
    config = json.loads((tmp_path / "teacher" / "config.json").read_text())
    (tmp_path / "teacher" / "config.json").write_text(json.dumps({**config, "id2label": {"0": "bad", "1": "good"}}))
    task = load_task(compose_cfg("task=sentiment", "model=tiny", "task.vocab_size=200", f"data.root={data_root}",
                                 f"task.teachers=[{tmp_path / 'teacher'}]"))
    with pytest.raises(UserError, match="not a sentiment model with the labels"):
        task.prepare(tmp_path, is_main=True)
    (tmp_path / "teacher" / "config.json").write_text(json.dumps(config))
    task = load_task(compose_cfg("task=sentiment", "model=tiny", "task.vocab_size=60", f"data.root={data_root}",
                                 f"task.teachers=[{tmp_path / 'teacher'}]"))
    with pytest.raises(UserError, match="has another vocabulary"):
        task.prepare(tmp_path, is_main=True)


def test_a_bert_checkpoint_fine_tunes_through_run_py(data_root, tmp_path):
    """run.py task=sentiment model.pretrained=<a BERT folder>: the checkpoint's WordPiece tokenizer replaces the
    fitted one, the encoder starts as BertModel computes it, the run is named by what it started from, and its
    folder classifies through transformers' pipeline as mode=predict does."""
    from transformers import AutoTokenizer, BertModel, pipeline

    texts = [json.loads(line)["text"] for line in (data_root / "sst2" / "train.jsonl").read_text().splitlines()]
    folder = bert_checkpoint(tmp_path / "bert-tiny", texts)
    task = load_task(compose_cfg("task=sentiment", f"data.root={data_root}", f"model.pretrained={folder}"))
    task.prepare(tmp_path / "prepared", is_main=True)
    model = task.build_model().eval()
    enc = AutoTokenizer.from_pretrained(folder)(texts[:4], padding=True, return_tensors="pt")
    assert task.tokenizer(texts[:4], padding=True, return_tensors="pt")["input_ids"].equal(enc["input_ids"])
    with torch.no_grad():
        ours = model.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        theirs = BertModel.from_pretrained(folder, add_pooling_layer=False).eval()(**enc).last_hidden_state
    real = enc["attention_mask"].bool()
    assert (ours[real] - theirs[real]).abs().max() <= 1e-5
    groups = param_groups(model, 0.01, head_lr_scale=10.0)  # the fresh classifier learns at 10 x lr
    head = {id(p) for n, p in model.named_parameters() if n.startswith("classifier.")}
    assert head and all((id(p) in head) == (g["lr_scale"] == 10.0) for g in groups for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    run_dir = tmp_path / "run"
    out = run_suite("task=sentiment", f"model.pretrained={folder}", f"data.root={data_root}", "trainer.max_steps=10",
                    "trainer.max_minutes=0", "trainer.eval_every=5", "trainer.head_lr_scale=10", f"run_dir={run_dir}",
                    cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["model"] == "bert-tiny+pretrained"
    assert AutoTokenizer.from_pretrained(run_dir).get_vocab() == AutoTokenizer.from_pretrained(folder).get_vocab()
    pred = run_suite("mode=predict", f"run_dir={run_dir}", f"text={texts[0]}", cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr[-2000:]
    top = pipeline("text-classification", model=str(run_dir))(texts[0])[0]
    label, score = pred.stdout.strip().split("\t")[:2]
    assert (top["label"], round(top["score"], 3)) == (label, float(score))
