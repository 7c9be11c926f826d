"""Build the ``reviews`` task's tokenizer and base policy from their seeds.

``proxygap task build`` calls :func:`build`: a word-level tokenizer (Hugging Face ``tokenizers``)
over the grammar's vocabulary, and a tiny GPT-2 pretrained for one epoch on a corpus sampled from
the grammar. Both are saved in the Hugging Face format (``from_pretrained`` loads them) and the
weights as safetensors. With the same seed and thread count the result is bit-for-bit identical
on the same machine (no dropout, one seeded generator for initialisation and data order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

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


def pretrain(
    model: GPT2LMHeadModel, sequences: list[list[int]], *, spec: BaseModelSpec, pad_id: int
) -> list[float]:
    """One epoch of next-token training (AdamW, warmup then cosine decay); returns losses."""
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
    model.eval()
    return losses


def build(out_dir: Path | str = ASSETS, spec: BaseModelSpec | None = None) -> Path:
    """Recreate the tokenizer and the pretrained base policy in ``out_dir``."""
    spec = spec or BaseModelSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
    corpus = sample_corpus(spec.n_sentences, seed=spec.seed)
    pad_id = cfg.pad_token_id
    if pad_id is None:
        raise ValueError("the reviews tokenizer has no pad token")
    losses = pretrain(model, encode_corpus(corpus, tokenizer), spec=spec, pad_id=pad_id)
    model.generation_config.pad_token_id = pad_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tail = sum(losses[-100:]) / len(losses[-100:])
    (out / "BUILD.txt").write_text(
        f"reviews base policy: {sum(p.numel() for p in model.parameters())} parameters, "
        f"{spec}\nfinal training loss (mean of last 100 steps): {tail:.4f}\n"
    )
    return out
