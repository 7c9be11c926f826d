"""Preference pairs as a direct-alignment recipe reads them: token ids, one forward pass per
batch of pairs, and reference log-probabilities cached once (Rafailov et al. 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from transformers import PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from proxygap.data.preferences import Pairs
from proxygap.losses.daa import PairBatchLogps
from proxygap.models.logprobs import response_logprobs

__all__ = ["PairTokens", "pair_logps", "prepare_pairs", "tokenize_pairs"]


@dataclass(frozen=True)
class PairTokens:
    """Token ids of ``N`` preference pairs: ``prompt`` starts with bos (when the tokenizer has
    one); ``chosen`` and ``rejected`` are the responses alone, each ending with eos. After
    :func:`prepare_pairs`, ``ref_chosen`` and ``ref_rejected`` hold the ``(N,)`` reference
    log-probs, computed once and reused at every step."""

    prompt: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompt)


def _encode(tokenizer: Tokenizer, texts: list[str], *, bos: bool) -> list[list[int]]:
    """Token ids without special tokens, with the tokenizer's bos (if any) in front when asked."""
    head = [tokenizer.bos_token_id] if bos and tokenizer.bos_token_id is not None else []
    ids = [head + list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    if bos and any(len(x) == 0 for x in ids):
        raise ValueError(
            "an empty prompt with a tokenizer without bos leaves nothing to condition on"
        )
    return ids


def tokenize_pairs(tokenizer: Tokenizer, pairs: Pairs) -> PairTokens:
    """Tokenize once: ``[bos] + prompt`` and ``response + [eos]``, both without other special
    tokens, so that a response is scored as the continuation the sampler would have produced."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token: responses need an end marker")
    return PairTokens(
        prompt=_encode(tokenizer, pairs.prompt, bos=True),
        chosen=[r + [eos] for r in _encode(tokenizer, pairs.chosen, bos=False)],
        rejected=[r + [eos] for r in _encode(tokenizer, pairs.rejected, bos=False)],
    )


def pair_logps(
    model: PreTrainedModel, tokens: PairTokens, index: Sequence[int], *, pad_id: int
) -> PairBatchLogps:
    """Summed log-probs of the chosen and rejected responses of pairs ``index`` under ``model``,
    from one forward pass over the ``2B`` concatenated sequences (Rafailov et al. 2023), with the
    response lengths (eos included) and the cached reference log-probs when ``tokens`` has them.
    Gradients flow into the policy log-probs when called with grad enabled."""
    idx = list(index)
    B = len(idx)
    rows = [tokens.chosen[i] for i in idx] + [tokens.rejected[i] for i in idx]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])  # (2B, T) right-padded
    mask = (torch.arange(width) < torch.tensor([len(r) for r in rows])[:, None]).float()
    prompts = [tokens.prompt[i] for i in idx] * 2
    seq = response_logprobs(model, prompts, ids, mask, pad_id=pad_id).sum(dim=-1)  # (2B,)
    n = mask.sum(dim=-1).to(seq.device)  # (2B,)
    ref_c = ref_r = None
    if tokens.ref_chosen is not None and tokens.ref_rejected is not None:
        ref_c, ref_r = (
            tokens.ref_chosen[idx].to(seq.device),
            tokens.ref_rejected[idx].to(seq.device),
        )
    return PairBatchLogps(seq[:B], seq[B:], ref_c, ref_r, n[:B], n[B:])


@torch.no_grad()
def prepare_pairs(
    ref: PreTrainedModel,
    tokenizer: Tokenizer,
    pairs: Pairs | PairTokens,
    *,
    batch_size: int = 256,
) -> PairTokens:
    """Tokenize ``pairs`` and cache ``log pi_ref`` of every chosen and rejected response; pairs
    prepared before are returned as they are."""
    if isinstance(pairs, PairTokens) and pairs.ref_chosen is not None:
        return pairs
    tokens = pairs if isinstance(pairs, PairTokens) else tokenize_pairs(tokenizer, pairs)
    limit = getattr(ref.config, "n_positions", None) or getattr(
        ref.config, "max_position_embeddings", None
    )
    rows = zip(tokens.prompt, tokens.chosen, tokens.rejected, strict=True)
    longest = max(len(p) + max(len(c), len(r)) for p, c, r in rows)
    if limit is not None and longest > limit:
        raise ValueError(f"a pair needs {longest} positions; the model has {limit}: shorten it")
    pad_id = tokenizer.pad_token_id
    batches = [
        pair_logps(ref, tokens, range(s, min(s + batch_size, len(tokens))), pad_id=pad_id)
        for s in range(0, len(tokens), batch_size)
    ]
    return replace(
        tokens,
        ref_chosen=torch.cat([b.policy_chosen.cpu() for b in batches]),
        ref_rejected=torch.cat([b.policy_rejected.cpu() for b in batches]),
    )
