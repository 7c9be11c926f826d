"""Reward models: a transformer trunk with a scalar head, trained with the Bradley-Terry loss.

A reward model here is any Hugging Face sequence-classification model with one output
(``AutoModelForSequenceClassification``, ``num_labels=1``); the reward of a text is the head's
output at its last non-padding token. :func:`new_reward_model` makes a small GPT-2 one for the
built-in tasks; :func:`proxygap.models.loading.load_reward_model` loads any other by path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GPT2ForSequenceClassification, PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from proxygap.losses.bradley_terry import bradley_terry_loss
from proxygap.models.schedule import lr_factor
from proxygap.models.tiny import tiny_gpt2_config


def new_reward_model(
    tokenizer: Tokenizer,
    *,
    n_embd: int,
    n_layer: int,
    n_head: int,
    n_positions: int = 64,
    seed: int = 0,
) -> GPT2ForSequenceClassification:
    """A freshly initialised GPT-2 reward model (no dropout) for ``tokenizer``'s vocabulary."""
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    cfg = tiny_gpt2_config(
        tokenizer, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions
    )
    cfg.num_labels = 1
    torch.manual_seed(seed)
    return GPT2ForSequenceClassification(cfg).eval()


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def encode_texts(
    tokenizer: Tokenizer, texts: Sequence[str], *, max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[bos] text [eos]`` ids (B, T) and attention mask (B, T).

    bos/eos are added where the tokenizer has them; texts longer than ``max_length`` keep their
    first ``max_length - 1`` tokens and the closing eos, so the head still reads an eos.
    """
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    body = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows = []
    for ids in body:
        row = ([bos] if bos is not None else []) + list(ids)
        row = row[: max_length - (eos is not None)]
        rows.append(row + ([eos] if eos is not None else []))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
    return ids, attn


def _rewards(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits[:, 0].float()


def max_length_of(model: PreTrainedModel) -> int:
    return int(getattr(model.config, "n_positions", None) or model.config.max_position_embeddings)


def _forward_pass(
    model: PreTrainedModel,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int,
    progress: str | None,
    hidden: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rewards ``(B,)`` and, with ``hidden``, final hidden states at the last token ``(B, H)``
    from one forward pass per batch; identical texts are run once, batches sorted by length."""
    unique = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(unique)}
    where = [index[t] for t in texts]
    order = sorted(range(len(unique)), key=lambda i: len(unique[i]))  # batches pad little
    scores = np.empty(len(unique), dtype=np.float64)
    states: np.ndarray | None = None
    max_len = max_length_of(model)
    device = next(model.parameters()).device
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc=progress, unit="batch", disable=progress is None):
        idx = order[s : s + batch_size]
        ids, attn = encode_texts(tokenizer, [unique[i] for i in idx], max_length=max_len)
        out = model(
            input_ids=ids.to(device), attention_mask=attn.to(device), output_hidden_states=hidden
        )
        scores[idx] = out.logits[:, 0].float().cpu().double().numpy()
        if hidden:
            h = out.hidden_states[-1]  # (b, T, H)
            last = attn.sum(dim=1) - 1  # right-padded: the last attended position
            rows = h[torch.arange(len(last)), last.to(device)].double().cpu().numpy()
            if states is None:
                states = np.empty((len(unique), rows.shape[1]), dtype=np.float64)
            states[idx] = rows
    if hidden and states is None:
        return scores[where], np.zeros((0, 0))
    return scores[where], None if states is None else states[where]


@torch.inference_mode()
def score_texts(
    model: PreTrainedModel,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 1024,
    progress: str | None = None,
) -> np.ndarray:
    """Reward of every text, (len(texts),) float64. Identical texts are scored once."""
    scores, _ = _forward_pass(
        model, tokenizer, texts, batch_size=batch_size, progress=progress, hidden=False
    )
    return scores


@torch.inference_mode()
def score_and_embed_texts(
    model: PreTrainedModel, tokenizer: Tokenizer, texts: Sequence[str], *, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`score_texts` and :func:`embed_texts` from the same forward pass: rewards
    ``(B,)`` and final hidden states ``(B, H)``, both float64."""
    scores, states = _forward_pass(
        model, tokenizer, texts, batch_size=batch_size, progress=None, hidden=True
    )
    assert states is not None
    return scores, states


def embed_texts(
    model: PreTrainedModel, tokenizer: Tokenizer, texts: Sequence[str], *, batch_size: int = 1024
) -> np.ndarray:
    """The reward model's final hidden state at each text's last token (the representation its
    score head reads), ``(len(texts), H)`` float64: the latent space InfoRM (Miao et al. 2024)
    looks for outliers in."""
    return score_and_embed_texts(model, tokenizer, texts, batch_size=batch_size)[1]


@dataclass
class RewardTrainConfig:
    """Bradley-Terry training of a reward model (one pass = one epoch over the pairs)."""

    epochs: float = 2.0
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    seed: int = 0


@dataclass
class TrainHistory:
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_reward_model(
    model: PreTrainedModel,
    tokenizer: Tokenizer,
    chosen: Sequence[str],
    rejected: Sequence[str],
    *,
    cfg: RewardTrainConfig,
    progress: str | None = None,
) -> TrainHistory:
    """Fit ``model`` to pairs with the Bradley-Terry loss (AdamW, warmup then cosine decay).

    ``chosen``/``rejected`` are full texts (prompt and response). Returns the per-step loss and
    accuracy. The model is left in eval mode.
    """
    if len(chosen) != len(rejected) or not chosen:
        raise ValueError(
            f"need equally many chosen and rejected texts (>0), got {len(chosen)}, {len(rejected)}"
        )
    n = len(chosen)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    n_steps = max(1, round(cfg.epochs * steps_per_epoch))
    warmup = max(1, round(cfg.warmup_fraction * n_steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, kind="cosine", warmup=warmup, total=n_steps)
    )
    max_len = max_length_of(model)
    history = TrainHistory()
    t0 = time.perf_counter()
    model.train()
    order = torch.empty(0, dtype=torch.long)
    for step in tqdm(range(n_steps), desc=progress, unit="step", disable=progress is None):
        if step % steps_per_epoch == 0:
            order = torch.randperm(n, generator=gen)
        k = step % steps_per_epoch
        idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size].tolist()
        texts = [chosen[i] for i in idx] + [rejected[i] for i in idx]
        ids, attn = encode_texts(tokenizer, texts, max_length=max_len)
        r = _rewards(model, ids, attn)
        losses, metrics = bradley_terry_loss(r[: len(idx)], r[len(idx) :])
        loss = losses.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        history.loss.append(loss.item())
        history.accuracy.append(metrics["rm/accuracy"])
    model.eval()
    history.seconds = time.perf_counter() - t0
    return history


def pairwise_accuracy(r_a: np.ndarray, r_b: np.ndarray, g_a: np.ndarray, g_b: np.ndarray) -> float:
    """Fraction of pairs the reward model orders as gold does.

    Pairs gold scores equal are skipped; pairs the reward model scores equal count one half
    (a coin flip), so a constant model scores 0.5, not 0.
    """
    keep = g_a != g_b
    if not keep.any():
        return float("nan")
    dr, dg = r_a[keep] - r_b[keep], g_a[keep] - g_b[keep]
    agree = np.where(dr == 0, 0.5, (np.sign(dr) == np.sign(dg)).astype(np.float64))
    return float(agree.mean())
