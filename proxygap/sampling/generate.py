"""Batched ancestral sampling from a causal LM with a KV cache.

A lean decode loop over ``model(input_ids, cache=...)`` (``past_key_values=`` on models written
before transformers renamed it): left-padded prompts, one forward pass per generated token,
Gumbel-max sampling from a seeded generator. A row that produces ``eos`` leaves the batch and
its KV cache at once, so later steps only compute the rows still running, and the loop exits
when none is (``model.generate`` keeps finished rows in the batch to the end). It returns the
response tokens with their log-probabilities under the (temperature-1) model, which RL and KL
estimates need and ``model.generate`` does not give without extra passes.
``benchmarks/bench_sampling.py`` compares the two.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Samples:
    """Responses sampled for a list of prompts (rows in prompt order, ``n`` per prompt).

    ``response_ids`` (B, T) is right-padded with ``pad_id``; ``mask`` (B, T) is 1 on response
    tokens including the closing eos; ``logprobs`` (B, T) are log pi(token) at temperature 1;
    ``finished`` (B,) tells which rows emitted eos within the budget. Sampled with ``topk``,
    ``topk_stats`` (B, T, 2) holds at every response position the policy's top-k probability
    mass and the entropy of its renormalised top-k distribution (:func:`topk_stats`), 0 on
    padding; else None.
    """

    prompt_index: torch.Tensor  # (B,) index into the prompt list
    prompt_ids: list[list[int]]
    response_ids: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) float
    logprobs: torch.Tensor  # (B, T) float
    finished: torch.Tensor  # (B,) bool
    topk_stats: torch.Tensor | None = None  # (B, T, 2): top-k mass, top-k entropy

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1).long()

    def prompt_ids_rows(self) -> list[list[int]]:
        """The prompt ids of every row (B lists)."""
        return [self.prompt_ids[i] for i in self.prompt_index.tolist()]


def topk_stats(logp: torch.Tensor, k: int) -> torch.Tensor:
    """``(..., 2)`` from next-token log-probabilities ``(..., V)``: the probability mass of the
    ``k`` most likely tokens, and the entropy (nats) of those ``k`` probabilities renormalised
    to sum to 1 (Shi et al. 2024's likelihood over-optimisation indicators, "Understanding
    Likelihood Over-optimisation in Direct Alignment Algorithms": both fall as the policy's
    next-token distribution loses the spread that gives its outputs diversity). ``k`` larger
    than ``V`` counts all ``V``; tokens of probability 0 add nothing to the entropy."""
    if k < 1:
        raise ValueError(f"topk must be >= 1, got {k}")
    top = logp.topk(min(k, logp.shape[-1]), dim=-1).values
    mass = top.exp().sum(-1)
    entropy = torch.special.entr(torch.softmax(top, dim=-1)).sum(-1)
    return torch.stack([mass, entropy], dim=-1)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """``[bos] + tokenizer(prompt, add_special_tokens=False)`` for every prompt (no bos if the
    tokenizer has none)."""
    bos = tokenizer.bos_token_id
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    return [([bos] if bos is not None else []) + list(x) for x in ids]


def condition_prompts(
    prompt_ids: Sequence[Sequence[int]], prefix: Sequence[int], bos_id: int | None
) -> list[list[int]]:
    """Every prompt with ``prefix`` inserted right after its leading ``bos_id`` (at the front if
    the prompt does not start with it): ``[bos] + x -> [bos] + prefix + x``. An empty prefix
    gives copies of the prompts."""
    out = []
    for p in prompt_ids:
        p = list(p)
        head = 1 if bos_id is not None and p[:1] == [bos_id] else 0
        out.append(p[:head] + list(prefix) + p[head:])
    return out


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) left-padded ids and their attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows])
    attn = (torch.arange(width) >= width - lengths[:, None]).long()
    return ids, attn


def _keeps_last_logits_only(model: PreTrainedModel) -> dict[str, int]:
    """``{"logits_to_keep": 1}`` where the model accepts it: the prefill then skips the LM head
    on every prompt position but the last, which saves a (B, P, V) tensor."""
    accepts = "logits_to_keep" in inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if accepts else {}


def _cache_argument(model: PreTrainedModel) -> str:
    """The name under which ``model.forward`` takes and returns its KV cache: ``cache`` on
    transformers' current API, ``past_key_values`` on models that predate the rename (passing the
    old name to a current model only warns now and fails from transformers 5.40)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _select_rows(cache, rows: torch.Tensor):
    """Keep only ``rows`` (batch indices) of a KV cache: a ``transformers`` Cache or a tuple."""
    if isinstance(cache, tuple):
        return tuple(tuple(t[rows] for t in layer) for layer in cache)
    cache.reorder_cache(rows)
    return cache


@torch.inference_mode()
def _sample_batch(
    model: PreTrainedModel,
    rows: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator,
    vocab_size: int | None = None,
    topk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Decode one batch. Rows that emit eos leave the batch (and its KV cache) at once, so each
    step costs in proportion to the rows still running, not to the whole batch. With
    ``vocab_size`` only the first ``vocab_size`` logits count (see :func:`sample`)."""
    device = next(model.parameters()).device
    ids, attn = _left_pad(rows, pad_id)
    ids, attn = ids.to(device), attn.to(device)
    B = ids.shape[0]
    out_tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_logp = torch.zeros((B, max_new_tokens), device=device)
    out_topk = torch.zeros((B, max_new_tokens, 2), device=device) if topk is not None else None
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    active = torch.arange(B, device=device)  # (A,) batch rows still generating
    positions = (attn.cumsum(dim=1) - 1).clamp(min=0)  # (B, P) position of each prompt token
    inputs, cache = ids, None
    keep_last = _keeps_last_logits_only(model)
    cache_arg = _cache_argument(model)
    T = 0
    for t in range(max_new_tokens):
        out = model(
            input_ids=inputs,
            attention_mask=attn,
            position_ids=positions,
            use_cache=True,
            **{cache_arg: cache},
            **keep_last,
        )
        cache = getattr(out, cache_arg)
        logits = out.logits[:, -1, :].float()  # (A, V)
        if vocab_size is not None:
            if vocab_size > logits.shape[-1]:
                raise ValueError(
                    f"vocab_size {vocab_size} exceeds the model's {logits.shape[-1]} logits"
                )
            logits = logits[:, :vocab_size]  # (A, vocab_size)
        logp = torch.log_softmax(logits, dim=-1)
        scaled = logp if temperature == 1.0 else torch.log_softmax(logits / temperature, dim=-1)
        u = torch.rand(scaled.shape, generator=generator, device="cpu").to(device)
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
        token = torch.argmax(scaled + gumbel, dim=-1)  # (A,)
        out_tokens[active, t] = token
        out_logp[active, t] = logp.gather(1, token[:, None]).squeeze(1)
        if out_topk is not None and topk is not None:
            out_topk[active, t] = topk_stats(logp, topk)
        stop = token == eos_id  # (A,)
        finished[active[stop]] = True
        T = t + 1
        if bool(stop.all()) or t == max_new_tokens - 1:
            break
        # next step: feed each running row its new token at the next position
        A = active.shape[0]
        inputs, positions = token[:, None], positions[:, -1:] + 1
        attn = torch.cat([attn, torch.ones((A, 1), dtype=attn.dtype, device=device)], dim=1)
        if bool(stop.any()):
            keep = (~stop).nonzero().squeeze(1)  # (A',)
            active, inputs, positions = active[keep], inputs[keep], positions[keep]
            attn = attn[keep]
            cache = _select_rows(cache, keep)
    tokens, logps = out_tokens[:, :T], out_logp[:, :T]
    # mask: tokens up to and including the first eos (everything for unfinished rows)
    is_eos = tokens == eos_id
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    mask = (~after_eos).float()
    stats = None if out_topk is None else (out_topk[:, :T] * mask[..., None]).cpu()
    return tokens.cpu(), mask.cpu(), (logps * mask).cpu(), finished.cpu(), stats


def sample(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    n_per_prompt: int = 1,
    max_new_tokens: int,
    temperature: float = 1.0,
    eos_id: int,
    pad_id: int,
    batch_size: int = 512,
    seed: int = 0,
    progress: str | None = None,
    vocab_size: int | None = None,
    topk: int | None = None,
) -> Samples:
    """Sample ``n_per_prompt`` responses for every prompt (rows grouped by prompt).

    Args:
        prompt_ids: token ids of each prompt (any lengths >= 1, e.g. just bos; left-padded
            internally).
        temperature: sampling temperature (> 0); log-probs are reported at temperature 1.
        seed: seeds one CPU generator; the same seed, model and batch size give the same samples.
        progress: a description for a progress bar, or None for none.
        vocab_size: if set, only the first ``vocab_size`` logits count: tokens are drawn from,
            and log-probs reported under, the softmax of ``logits[..., :vocab_size]`` (e.g. a
            policy with extra control tokens appended to its vocabulary that it must never
            emit). ``1 <= vocab_size <=`` the width of the model's logits.
        topk: if set, also record :func:`topk_stats` of the policy's next-token distribution
            (temperature 1) at every sampled position, in ``Samples.topk_stats``; it draws no
            random numbers, so the samples are the same with or without it.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompt_ids:
        raise ValueError("no prompts to sample from")
    empty = [i for i, p in enumerate(prompt_ids) if len(p) == 0]
    if empty:
        raise ValueError(
            f"prompts {empty[:5]} are empty; every prompt needs at least one token (e.g. bos)"
        )
    if n_per_prompt < 1 or batch_size < 1:
        raise ValueError(
            f"n_per_prompt and batch_size must be >= 1, got {n_per_prompt} and {batch_size}"
        )
    if vocab_size is not None and vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if topk is not None and topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    gen = torch.Generator().manual_seed(seed)
    index = torch.arange(len(prompt_ids)).repeat_interleave(n_per_prompt)
    rows = [prompt_ids[i] for i in index.tolist()]
    parts = []
    starts = range(0, len(rows), batch_size)
    for s in tqdm(starts, desc=progress, unit="batch", disable=progress is None):
        parts.append(
            _sample_batch(
                model,
                rows[s : s + batch_size],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                eos_id=eos_id,
                pad_id=pad_id,
                generator=gen,
                vocab_size=vocab_size,
                topk=topk,
            )
        )
    width = max(p[0].shape[1] for p in parts)

    def cat(k: int, fill: float) -> torch.Tensor:
        padded = []
        for p in parts:
            x = p[k]
            assert x is not None
            gap = (0, 0) * (x.dim() - 2) + (0, width - x.shape[1])  # pad dim 1 only
            padded.append(torch.nn.functional.pad(x, gap, value=fill))
        return torch.cat(padded)

    return Samples(
        prompt_index=index,
        prompt_ids=[list(p) for p in prompt_ids],
        response_ids=cat(0, pad_id).long(),
        mask=cat(1, 0.0),
        logprobs=cat(2, 0.0),
        finished=torch.cat([p[3] for p in parts]),
        topk_stats=cat(4, 0.0) if topk is not None else None,
    )


def decode_responses(samples: Samples, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Response texts without special tokens (eos and padding dropped)."""
    ids = [
        row[: int(n)].tolist() for row, n in zip(samples.response_ids, samples.lengths, strict=True)
    ]
    return tokenizer.batch_decode(ids, skip_special_tokens=True)
