"""The NER task: subword alignment, windows, IOB handling, decoding, spans, overfitting, bad input, run.py."""

import json
import random
from pathlib import Path

import pytest
import torch

from core.task import UserError, load_task
from tasks.ner import WORD_RE, Collate, split_windows, stitch, to_iob2, transition_rules, viterbi
from tests.conftest import run_suite
from tests.test_train import compose_cfg

FIRST = "Angela Peter Maria Johannes Ingrid Kowalczyk".split()
LAST = "Merkel Blackburn Schwarzenegger Lindqvist Okonkwo".split()
PLACES = [["Paris"], ["New", "York"], ["Brussels"], ["Buenos", "Aires"], ["Reykjavik"]]
ORGS = [["European", "Commission"], ["Reuters"], ["United", "Nations"]]
VERBS = "visited left praised".split()


def conll_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    """`<PER> <verb> <LOC|ORG> on Monday .` with IOB2 tags, names long enough for WordPiece to split."""
    person = [rng.choice(FIRST), rng.choice(LAST)]
    kind, other = rng.choice([("LOC", rng.choice(PLACES)), ("ORG", rng.choice(ORGS))])
    tokens = person + [rng.choice(VERBS)] + other + ["on", "Monday", "."]
    tags = ["B-PER", "I-PER", "O"] + [f"{'B' if i == 0 else 'I'}-{kind}" for i in range(len(other))] + ["O"] * 3
    return tokens, tags


def write_conll(root: Path, sizes=(60, 12, 12), seed: int = 0) -> Path:
    """<root>/conll2003/{train,validation,test}.jsonl with CoNLL-2003's fields {id, tokens, ner_tags}."""
    rng, folder = random.Random(seed), root / "conll2003"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "validation", "test"), sizes):
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in range(n):
                tokens, tags = conll_sentence(rng)
                f.write(json.dumps({"id": i, "tokens": tokens, "ner_tags": tags}) + "\n")
    return folder


def make_task(root: Path, run_dir: Path, *overrides: str):
    cfg = compose_cfg("task=ner", "model=tiny", "task.vocab_size=120", f"data.root={root}", *overrides)
    task = load_task(cfg)
    task.prepare(run_dir, is_main=True)
    return task


@pytest.fixture(scope="module")
def conll_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ner_data")
    write_conll(root)
    return root


def test_alignment_round_trips_on_split_words(conll_root, tmp_path):
    task = make_task(conll_root, tmp_path)
    words = ["Schwarzenegger", "visited", "Reykjavik", "on", "Monday", "."]
    (row,) = task.rows([words], [[7, 0, 1, 0, 0, 0]])
    starts, ids, labels = row["word_starts"], row["input_ids"], row["labels"]
    assert len(starts) == len(words)
    ends = starts[1:] + [len(ids) - 1]
    assert max(e - s for s, e in zip(starts, ends)) > 1, "the vocabulary should split at least one of these rare names"
    for w, (start, end) in enumerate(zip(starts, ends)):
        assert task.tokenizer.decode(ids[start:end]) == words[w]  # the word's pieces, and only them
        assert labels[start] == [7, 0, 1, 0, 0, 0][w] and all(x == -100 for x in labels[start + 1 : end])
    assert labels[0] == labels[-1] == -100  # [CLS], [SEP]


def test_long_sentences_are_windowed_not_truncated(conll_root, tmp_path):
    task = make_task(conll_root, tmp_path, "task.max_len=12")
    tokens, tags = [], []
    for _ in range(6):
        t, y = conll_sentence(random.Random(len(tokens)))
        tokens, tags = tokens + t, tags + [task.labels.index(x) for x in y]
    rows = task.rows([tokens], [tags])
    assert len(rows) > 1 and all(len(r["input_ids"]) <= 12 for r in rows)
    assert [r["offset"] for r in rows] == sorted({r["offset"] for r in rows})
    gold = [[r["labels"][s] for s in r["word_starts"]] for r in rows]
    records = [(r["sid"], r["offset"], g, g, g) for r, g in reversed(list(zip(rows, gold)))]  # any order back
    assert stitch(records)[0] == [tags]
    assert split_windows([[1] * 30, [2], [3, 4]], 4) == [(0, 1), (1, 3)]  # an over-long word gets its own window


def test_iob1_becomes_iob2_and_decoding_keeps_paths_legal():
    assert to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC",
                                                                          "B-ORG"]
    assert to_iob2(["B-PER", "I-PER", "O"]) == ["B-PER", "I-PER", "O"]
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    allowed, start = transition_rules(labels)
    trans, first = (~allowed).float() * -1e4, (~start).float() * -1e4
    # argmax would say I-PER O I-LOC: illegal twice; Viterbi must pick the best legal path instead
    scores = torch.tensor([[[0.0, 1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.5]]])
    (path,) = viterbi(scores, torch.ones(1, 3, dtype=torch.bool), trans, first)
    assert [labels[t] for t in path] == ["B-PER", "O", "B-LOC"]


def test_word_regex_gives_conll_like_words_and_exact_spans():
    text = "Angela Merkel's U.S. visit on 1996-08-22, said Reuters."
    words = [m.group() for m in WORD_RE.finditer(text)]
    assert words == ["Angela", "Merkel", "'s", "U.S.", "visit", "on", "1996-08-22", ",", "said", "Reuters", "."]
    assert all(text[m.start() : m.end()] == m.group() for m in WORD_RE.finditer(text))


def train_steps(task, steps: int = 150) -> torch.nn.Module:
    torch.manual_seed(0)
    model = task.build_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = Collate(task.tokenizer, chars=task.cfg.task.char_features)(task.data["train"])
    for _ in range(steps):
        loss = model(**batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("decoder,chars", [("constrained", "true"), ("crf", "false")])
def test_tiny_model_overfits_and_predicts_character_spans(tmp_path, decoder, chars):
    write_conll(tmp_path, sizes=(8, 8, 8))
    task = make_task(tmp_path, tmp_path, f"task.decoder={decoder}", f"task.char_features={chars}",
                     "model.dropout=0.0", "task.word_dropout=0.0")
    model = train_steps(task)
    records = []
    with torch.no_grad():
        for batch in task.dataloader("train", train=False):
            records += task.eval_step(model, batch)
    assert task.compute_metrics(records)["f1"] == 100.0
    row = json.loads((tmp_path / "conll2003/train.jsonl").read_text().splitlines()[0])
    text = " ".join(row["tokens"][:-1]) + "."  # "Maria Lindqvist left Buenos Aires on Monday."
    (line,) = task.predict(model, [text])
    expected = [f"{t[2:]} {text.index(w)}:{text.index(w) + len(w)} {w}" for t, w in entity_surfaces(row)]
    assert line == f"{text}\t{'; '.join(expected)}"


def entity_surfaces(row: dict) -> list[tuple[str, str]]:
    out = []
    for word, tag in zip(row["tokens"], row["ner_tags"]):
        if tag.startswith("B-"):
            out.append((tag, word))
        elif tag.startswith("I-"):
            out[-1] = (out[-1][0], out[-1][1] + " " + word)
    return out


def test_bad_tags_are_reported_with_their_line(tmp_path):
    folder = write_conll(tmp_path)
    lines = (folder / "test.jsonl").read_text().splitlines()
    row = json.loads(lines[4])
    row["ner_tags"][0] = "B-DATE"
    lines[4] = json.dumps(row)
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"conll2003/test.jsonl line 5: tag 'B-DATE' is outside the label set"):
        make_task(tmp_path, tmp_path)
    row["ner_tags"][0] = "PERSON"
    lines[4] = json.dumps(row)
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"line 5: tag 'PERSON' is not O, B-<type> or I-<type>"):
        make_task(tmp_path, tmp_path)
    row["ner_tags"] = row["ner_tags"][:-1]
    lines[4] = json.dumps(row)
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"line 5: \d+ tokens but \d+ tags"):
        make_task(tmp_path, tmp_path)


def test_run_py_trains_and_predicts_entities(tmp_path):
    write_conll(tmp_path / "data")
    args = ["task=ner", "model=tiny", "task.vocab_size=120", "trainer.max_steps=4", "trainer.batch_size=8",
            "trainer.eval_every=2", "trainer.mixed_precision=no"]
    out = run_suite(*args, "hydra.run.dir=run", cwd=tmp_path, env={"SUITE_DATA": str(tmp_path / "data"),
                                                                      "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test f1 " in out.stdout and "PER_f1" in out.stdout
    assert len((tmp_path / "run/history.jsonl").read_text().splitlines()) == 2
    text = "Angela Merkel visited Paris on Monday."
    pred = run_suite("task=ner", "mode=predict", "run_dir=run", f"text={text}", cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr[-2000:]
    line = pred.stdout.strip().splitlines()[-1]
    assert line.startswith(text + "\t")
    for entity in line.split("\t")[1].split("; "):  # whatever an untrained model finds, its spans must be exact
        if entity != "(no entities)":
            kind, span, surface = entity.split(" ", 2)
            start, end = map(int, span.split(":"))
            assert kind in ("PER", "LOC", "ORG") and text[start:end] == surface


def test_integer_tags_need_names_and_iob1_data_is_read(tmp_path):
    folder = write_conll(tmp_path)
    names = ["O", "I-PER", "I-LOC", "I-ORG", "B-PER", "B-LOC", "B-ORG"]  # IOB1: entities start with I-
    for split in ("train", "validation", "test"):
        path = folder / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for r in rows:
            r["ner_tags"] = [names.index(t.replace("B-", "I-")) for t in r["ner_tags"]]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match="train.jsonl line 1: integer tags .* set task.tag_names"):
        make_task(tmp_path, tmp_path)
    task = make_task(tmp_path, tmp_path, f"task.tag_names=[{','.join(names)}]")
    assert task.labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    first = json.loads((folder / "train.jsonl").read_text().splitlines()[0])
    row = task.data["train"][0]
    assert [task.labels[row["labels"][s]] for s in row["word_starts"]][:2] == ["B-PER", "I-PER"]
    assert first["ner_tags"][:2] == [1, 1]
