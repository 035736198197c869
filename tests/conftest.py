"""Shared fixtures: a tiny dataset with the schema of each real one, so tests never need ../shared."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
POSITIVE = "good great fun moving brilliant charming funny gripping lovely superb".split()
NEGATIVE = "bad awful dull boring tedious weak clumsy bland messy lifeless".split()
FILLER = "the film movie story plot was is a an and this it quite very".split()


def sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if label else NEGATIVE, 2)
    rng.shuffle(words)
    return " ".join(words)


def write_sst2(root: Path, sizes=(160, 40, 40), seed: int = 0) -> Path:
    """<root>/sst2/{train,validation,test}.jsonl with SST-2's fields {id, text, label}."""
    rng = random.Random(seed)
    folder = root / "sst2"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "validation", "test"), sizes):
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in range(n):
                label = i % 2
                f.write(json.dumps({"id": i, "text": sentence(rng, label), "label": label}) + "\n")
    return folder


@pytest.fixture
def one_thread():
    """Training in the test process on one thread: the subprocess runs of other tests get the other core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_sst2(root)
    return root


def run_suite(*args: str, cwd: Path, env: dict | None = None, launcher: list[str] | None = None,
              timeout: int = 300) -> subprocess.CompletedProcess:
    """`python run.py ARGS` as a user types it, from `cwd` (so outputs/ lands there)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "SUITE_DATA": "", **(env or {})}
    cmd = (launcher or [sys.executable]) + [str(ROOT / "run.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


WITHOUT_SUITE = """
import sys
# a machine without the suite: no editable-install finder, no path into the repository
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path = [p for p in sys.path if not p.startswith({root!r}) or ".venv" in p]
try:
    import core
    raise SystemExit("the suite is importable: the test would prove nothing")
except ImportError:
    pass
"""


def run_without_suite(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run Python `code` in a process that cannot import this repository (only the installed libraries), as a user
    with transformers but without the suite would; its own HF_MODULES_CACHE keeps the copied modeling files apart."""
    env = {**os.environ, "HF_MODULES_CACHE": str(cwd / "hf_modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    script = WITHOUT_SUITE.format(root=str(ROOT)) + code
    return subprocess.run([sys.executable, "-I", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def text_logits_without_suite(folder: Path, auto_class: str, texts: list[str], cwd: Path, then: str = "") -> list[str]:
    """In a process without the suite: load the run folder `folder` with transformers' `auto_class` and its tokenizer
    (trust_remote_code), print the module the model came from and its logits on `texts` as JSON, then run `then`
    (more code, which may use `folder` and `texts`); returns stdout's lines from the first of those."""
    out = run_without_suite(f"""
import json, torch
from transformers import {auto_class}, AutoTokenizer, pipeline
folder, texts = {str(folder)!r}, {texts!r}
model = {auto_class}.from_pretrained(folder, trust_remote_code=True).eval()
enc = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)(texts, padding=True, return_tensors="pt")
with torch.no_grad():
    print(type(model).__module__, json.dumps(model(**enc).logits.tolist()))
""" + then, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("transformers_modules")):]


def killed_and_resumed(args: list[str], tmp_path: Path, kill_after_step: int) -> tuple[dict, dict]:
    """Train `args` once whole; train them again, SIGKILL the process a moment after its checkpoint at
    `kill_after_step` (trainer.save_every must reach it), resume it with trainer.resume=true; both metrics.json."""
    env = {"OMP_NUM_THREADS": "1"}
    first = run_suite(*args, f"run_dir={tmp_path / 'whole'}", cwd=tmp_path, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    killed = tmp_path / "killed"
    job = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"run_dir={killed}"], cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "SUITE_DATA": "", **env},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoints" / f"step_{kill_after_step:08d}").is_dir():
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere after that checkpoint, between validations
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not (killed / "metrics.json").exists(), "the run finished before it was killed"
    resumed = run_suite(*args, f"run_dir={killed}", "trainer.resume=true", cwd=tmp_path, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    return tuple(json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", killed))


# -- small published-architecture checkpoints with their tokenizers (model.pretrained= without the Hub) -------------


def jittered(model: torch.nn.Module) -> torch.nn.Module:
    """Every floating parameter and buffer plus N(0, 0.1^2): no bias stays zero, no LayerNorm the identity."""
    torch.manual_seed(0)
    with torch.no_grad():
        for _, p in [*model.named_parameters(), *model.named_buffers()]:
            if p.is_floating_point():
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def bert_checkpoint(folder: Path, texts: list[str]) -> Path:
    """A 2-layer BERT with an uncased WordPiece vocabulary of `texts`' words: as all-MiniLM-L6-v2's folder is laid
    out (config.json, model.safetensors, vocab.txt, tokenizer files)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in texts for w in t.lower().replace(".", " .").replace(",", " ,").split()})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(folder)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    jittered(BertModel(config)).save_pretrained(folder)
    return folder


def bart_checkpoint(folder: Path, texts: list[str]) -> Path:
    """A 1+1-layer BART with a byte-level BPE vocabulary of `texts` (<s>=0, <pad>=1, </s>=2 as BART's)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    tok = BartTokenizerFast(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tok.save_pretrained(folder)
    config = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=512)
    jittered(BartForConditionalGeneration(config)).save_pretrained(folder)
    return folder


def marian_checkpoint(folder: Path, texts: list[str]) -> Path:
    """A 1+1-layer Marian with one SentencePiece vocabulary of `texts` for both sides (</s>=0, <unk>=1, <pad> last,
    as Helsinki-NLP/opus-mt-*); its tokenizer is SentencePiece's (no Rust version), as the published ones."""
    import io

    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=60,
                                   hard_vocab_limit=False, character_coverage=1.0, bos_id=-1, eos_id=-1, pad_id=-1,
                                   unk_id=0, minloglevel=2)
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    tok = MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"))
    tok.save_pretrained(folder)
    config = MarianConfig(vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=vocab["<pad>"],
                          eos_token_id=0, decoder_start_token_id=vocab["<pad>"], scale_embedding=True,
                          activation_function="swish")
    torch.manual_seed(0)
    model = MarianMTModel(config)
    with torch.no_grad():  # its fixed sinusoids stay as they are (not saved; the core computes them)
        for name, p in model.named_parameters():
            if "embed_positions" not in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval().save_pretrained(folder)
    return folder
