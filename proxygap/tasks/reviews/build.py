"""Build the ``reviews`` task's tokenizer and base policies from their seeds.

``proxygap task build`` calls :func:`build`: a word-level tokenizer (Hugging Face ``tokenizers``)
over the grammar's vocabulary, and a tiny GPT-2 pretrained for one epoch on a corpus sampled from
the grammar. Both are saved in the Hugging Face format (``from_pretrained`` loads them) and the
weights as safetensors. With the same seed and thread count the result is bit-for-bit identical
on the same machine (no dropout, one seeded generator for initialisation and data order).

The task ships the base policy at three sizes (:data:`POLICY_SIZES`), pretrained with one recipe
(corpus, epochs, learning rate, seed) and differing only in width and depth, so a study can ask
how overoptimization depends on the policy's scale. ``base`` is the original policy; the other
two were built with one torch thread and carry ``BUILD.json``: the spec, the thread count and
digests of the weights at initialisation and after :data:`FINGERPRINT_STEPS` steps, the norm of
each weight tensor after those steps, and the sha256 of the shipped ``model.safetensors``. A test
recomputes the first steps cheaply: the initial weights must match bit for bit, the norms after
the steps to a relative 1e-4 (float kernels of other library versions change the last bits of a
training step, so the step digest holds only on the machine and versions that built it).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import overload

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from tqdm.auto import tqdm
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from proxygap.models.tiny import tiny_gpt2_config
from proxygap.tasks.reviews.grammar import BOS, EOS, PAD, UNK, sample_corpus, vocabulary

ASSETS = Path(__file__).parent / "assets"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the grammar's vocabulary; unknown words map to ``<unk>``."""
    vocab = {word: i for i, word in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )


@dataclass(frozen=True)
class BaseModelSpec:
    """The base policy and its pretraining (defaults: 0.6 M parameters, ~2 min on 2 cores)."""

    n_embd: int = 128
    n_layer: int = 3
    n_head: int = 4
    n_positions: int = 64
    n_sentences: int = 200_000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    seed: int = 0
    bf16: bool = False  # bf16 autocast is slower than fp32 on CPUs without AMX


def encode_corpus(texts: list[str], tokenizer: PreTrainedTokenizerFast) -> list[list[int]]:
    """``<bos> words <eos>`` token ids of each text."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [[bos, *ids, eos] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@dataclass(frozen=True)
class PolicySize:
    """One shipped size of the base policy: its folder, its recipe and the torch thread count
    its weights were built with (None: not recorded, the original ``base``)."""

    folder: Path
    spec: BaseModelSpec
    threads: int | None


POLICY_SIZES: dict[str, PolicySize] = {
    "tiny": PolicySize(ASSETS / "tiny", BaseModelSpec(n_embd=32, n_layer=2), threads=1),
    "small": PolicySize(ASSETS / "small", BaseModelSpec(n_embd=64, n_layer=2), threads=1),
    "base": PolicySize(ASSETS, BaseModelSpec(), threads=None),
}
"""The base policy's sizes (0.03 M, 0.11 M and 0.61 M parameters; ``base`` is the default).
A size above ``base`` would cost several times its pretraining (hours on a busy 2-core CPU), so
the sizes span 20x downwards."""

FINGERPRINT_STEPS = 8
"""Pretraining steps after which :func:`build` records a digest of the weights."""


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the state dict's names and float32 bytes, in order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def weights_norms(model: torch.nn.Module) -> list[float]:
    """The L2 norm of each tensor of the state dict, in order (float64, 8 significant digits)."""
    return [float(f"{t.detach().double().norm().item():.8g}") for t in model.state_dict().values()]


def pretrain(
    model: GPT2LMHeadModel,
    sequences: Sequence[list[int]],
    *,
    spec: BaseModelSpec,
    pad_id: int,
    stop_after: int | None = None,
    on_step: Callable[[int, GPT2LMHeadModel], None] | None = None,
) -> list[float]:
    """One epoch of next-token training (AdamW, warmup then cosine decay); returns losses.

    ``stop_after`` ends it after that many steps (the schedule stays the full epoch's);
    ``on_step(steps_done, model)`` is called after every step."""
    gen = torch.Generator().manual_seed(spec.seed)
    order = torch.randperm(len(sequences), generator=gen).tolist()
    n_steps = math.ceil(len(order) / spec.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        progress = (step - spec.warmup_steps) / max(1, n_steps - spec.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses: list[float] = []
    model.train()
    bar = tqdm(range(n_steps), desc="pretrain base policy", unit="step")
    for step in bar:
        if stop_after is not None and step >= stop_after:
            break
        batch = [sequences[i] for i in order[step * spec.batch_size : (step + 1) * spec.batch_size]]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
        labels = ids.masked_fill(ids == pad_id, -100)
        attn = (ids != pad_id).long()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.bf16):
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if on_step is not None:
            on_step(step + 1, model)
    model.eval()
    return losses


def _start(spec: BaseModelSpec) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast, int]:
    """The initialised model (seeded by ``spec.seed``), the tokenizer and the pad id."""
    torch.manual_seed(spec.seed)
    tokenizer = build_tokenizer()
    cfg = tiny_gpt2_config(
        tokenizer,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        n_positions=spec.n_positions,
    )
    model = GPT2LMHeadModel(cfg)
    pad_id = cfg.pad_token_id
    if pad_id is None:
        raise ValueError("the reviews tokenizer has no pad token")
    return model, tokenizer, pad_id


class _Threads:
    """``torch.set_num_threads(n)`` inside the block (no change for None)."""

    def __init__(self, n: int | None) -> None:
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n is not None:
            torch.set_num_threads(self.n)

    def __exit__(self, *_: object) -> None:
        torch.set_num_threads(self.before)


def build(
    out_dir: Path | str = ASSETS, spec: BaseModelSpec | None = None, *, threads: int | None = None
) -> Path:
    """Recreate the tokenizer and the pretrained base policy in ``out_dir`` (with ``threads``
    torch threads, when given; they are recorded in ``BUILD.json``)."""
    spec = spec or BaseModelSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digests: dict[str, str] = {}
    norms: dict[str, list[float]] = {}

    def fingerprint(steps: int, model: GPT2LMHeadModel) -> None:
        if steps == FINGERPRINT_STEPS:
            digests[f"step_{steps}"] = weights_digest(model)
            norms[f"step_{steps}"] = weights_norms(model)

    with _Threads(threads):
        model, tokenizer, pad_id = _start(spec)
        digests["init"] = weights_digest(model)
        corpus = sample_corpus(spec.n_sentences, seed=spec.seed)
        losses = pretrain(
            model, encode_corpus(corpus, tokenizer), spec=spec, pad_id=pad_id, on_step=fingerprint
        )
    model.generation_config.pad_token_id = pad_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tail = sum(losses[-100:]) / len(losses[-100:])
    n_params = sum(p.numel() for p in model.parameters())
    (out / "BUILD.txt").write_text(
        f"reviews base policy: {n_params} parameters, "
        f"{spec}\nfinal training loss (mean of last 100 steps): {tail:.4f}\n"
    )
    record = {
        "parameters": n_params,
        "spec": asdict(spec),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "final_loss": round(tail, 4),
        "digests": digests,
        "norms": norms,
        "sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(),
    }
    (out / "BUILD.json").write_text(json.dumps(record, indent=1) + "\n")
    return out


class _Encoded(Sequence[list[int]]):
    """``encode_corpus(texts, tokenizer)``, each text encoded when first read."""

    def __init__(self, texts: list[str], tokenizer: PreTrainedTokenizerFast) -> None:
        self.texts, self.tokenizer = texts, tokenizer

    def __len__(self) -> int:
        return len(self.texts)

    @overload
    def __getitem__(self, i: int) -> list[int]: ...

    @overload
    def __getitem__(self, i: slice) -> list[list[int]]: ...

    def __getitem__(self, i: int | slice) -> list[int] | list[list[int]]:
        if isinstance(i, slice):
            return encode_corpus(self.texts[i], self.tokenizer)
        return encode_corpus([self.texts[i]], self.tokenizer)[0]


def rebuild_fingerprint(
    spec: BaseModelSpec,
    *,
    steps: int = FINGERPRINT_STEPS,
    threads: int | None = None,
    corpus: list[str] | None = None,
) -> tuple[dict[str, str], dict[str, list[float]]]:
    """The digests and norms :func:`build` records, recomputed from the first ``steps`` steps
    only (``corpus``: ``sample_corpus(spec.n_sentences, seed=spec.seed)`` when already at
    hand)."""
    with _Threads(threads):
        model, tokenizer, pad_id = _start(spec)
        digests = {"init": weights_digest(model)}
        if corpus is None:
            corpus = sample_corpus(spec.n_sentences, seed=spec.seed)
        lazy = _Encoded(corpus, tokenizer)  # only the first steps' sentences get encoded
        pretrain(model, lazy, spec=spec, pad_id=pad_id, stop_after=steps)
        digests[f"step_{steps}"] = weights_digest(model)
    return digests, {f"step_{steps}": weights_norms(model)}
