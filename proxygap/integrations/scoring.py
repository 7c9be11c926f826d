"""What every trainer adapter shares: an ensemble reward read from reward-model folders, the
signals of one scored batch, and a window that turns samples scored one at a time into batches.

An ensemble scores texts with ``K`` reward models; each member is normalised on reference texts
(base-policy samples) when they are given, then the members are aggregated (Coste et al. 2023,
"Reward Model Ensembles Help Mitigate Overoptimization"): the mean, the worst case (WCO) or the
mean minus ``lambda`` times the member variance (UWO). Without reference texts the members'
raw scores are aggregated, so WCO and UWO then mix members on whatever scales they were trained
to.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from proxygap.analysis.diversity import distinct_n
from proxygap.models.loading import check_vocab_match, load_reward_model, load_tokenizer
from proxygap.rewards.proxy import aggregate_members
from proxygap.rewards.reward_model import score_texts

__all__ = [
    "AGGREGATIONS",
    "EnsembleScorer",
    "Joiner",
    "SampleWindow",
    "batch_signals",
    "concat_join",
    "default_monitor",
    "member_std",
    "text_join",
]

AGGREGATIONS = ("mean", "wco", "uwo")
Joiner = Callable[[Sequence[Any], Sequence[Any]], list[str]]
"""``(prompts, completions) -> full texts`` as the reward models read them."""


def concat_join(prompts: Sequence[Any], completions: Sequence[Any]) -> list[str]:
    """``prompt + completion``, as TRL joins texts for a reward model of standard-format data."""
    for p, c in zip(prompts, completions, strict=True):
        if not isinstance(p, str) or not isinstance(c, str):
            raise TypeError(
                "conversational prompts/completions (lists of messages) need a join function "
                f"that renders them as text; got {type(p).__name__} and {type(c).__name__}"
            )
    return [p + c for p, c in zip(prompts, completions, strict=True)]


def text_join(separator: str = " ", *, strip_prefix: str = "") -> Joiner:
    """``prompt + separator + completion`` with ``strip_prefix`` (e.g. ``"<bos> "``, which a
    policy needs in its prompt and a reward model does not read) removed from each prompt: the
    join of the built-in tasks (:meth:`proxygap.tasks.base.Task.join`)."""

    def join(prompts: Sequence[Any], completions: Sequence[Any]) -> list[str]:
        out = []
        for p, c in zip(prompts, completions, strict=True):
            if not isinstance(p, str) or not isinstance(c, str):
                raise TypeError("text_join needs text prompts and completions")
            if strip_prefix and p.startswith(strip_prefix):
                p = p[len(strip_prefix) :]
            out.append(f"{p}{separator}{c}" if p and c else f"{p}{c}")
        return out

    return join


class EnsembleScorer:
    """``K`` reward models scoring texts: members ``(B, K)`` normalised on reference texts, and
    their aggregation ``(B,)`` (Coste et al. 2023; docs/methods.md §4).

    Args:
        models: the members, sequence-classification models with one output.
        tokenizer: their tokenizer (texts are encoded ``[bos] text [eos]`` as they were trained,
            :func:`proxygap.rewards.reward_model.encode_texts`).
        aggregation: ``"mean"``, ``"wco"`` (min over members) or ``"uwo"`` (mean minus
            ``uwo_lambda`` times the population variance over members).
        uwo_lambda: UWO's ``lambda`` (Coste et al.: 0.5 for best-of-n, about 0.1 for PPO).
        reference: base-policy texts; each member's mean there is subtracted and, with
            ``normalise="standardise"``, its standard deviation divided by (a member constant on
            them keeps scale 1). ``None``: raw scores.
        normalise: ``"standardise"`` (default, as the mitigation study) or ``"centre"`` (as the
            study's RL proxy); ignored without ``reference``.
        batch_size: texts per forward pass.
    """

    def __init__(
        self,
        models: Sequence[PreTrainedModel],
        tokenizer: PreTrainedTokenizerBase,
        *,
        aggregation: str = "mean",
        uwo_lambda: float = 0.5,
        reference: Sequence[str] | None = None,
        normalise: Literal["standardise", "centre"] = "standardise",
        batch_size: int = 256,
    ) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one reward model")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; allowed: {list(AGGREGATIONS)}")
        if not uwo_lambda >= 0:
            raise ValueError(f"uwo_lambda must be >= 0, got {uwo_lambda}")
        if normalise not in ("standardise", "centre"):
            raise ValueError(f"normalise must be 'standardise' or 'centre', got {normalise!r}")
        self.models, self.tokenizer = list(models), tokenizer
        self.aggregation, self.uwo_lambda, self.batch_size = aggregation, uwo_lambda, batch_size
        K = len(self.models)
        self.centre, self.scale = np.zeros(K), np.ones(K)
        if reference is not None:
            if len(reference) < 2:
                raise ValueError(f"need at least 2 reference texts, got {len(reference)}")
            raw = self.raw(reference)
            self.centre = raw.mean(axis=0)
            if normalise == "standardise":
                scale = raw.std(axis=0)
                self.scale = np.where(scale > 0, scale, 1.0)

    @classmethod
    def from_folders(
        cls,
        paths: Sequence[str | Path],
        *,
        tokenizer: PreTrainedTokenizerBase | str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> EnsembleScorer:
        """Members loaded by path with :func:`proxygap.models.loading.load_reward_model`
        (safetensors only; remote code only with ``trust_remote_code=True``). The tokenizer is
        ``tokenizer`` (an object or a path), else the one saved in the first folder.
        ``kwargs`` go to the constructor."""
        if not paths:
            raise ValueError("an ensemble needs at least one reward-model folder")
        if tokenizer is None or isinstance(tokenizer, str | Path):
            tok_path = paths[0] if tokenizer is None else tokenizer
            tokenizer = load_tokenizer(tok_path, trust_remote_code=trust_remote_code)
        models = []
        for path in paths:
            model = load_reward_model(path, dtype=dtype, trust_remote_code=trust_remote_code)
            check_vocab_match(model, tokenizer, f"reward model {str(path)!r}")
            if device is not None:
                model = model.to(device)  # type: ignore[arg-type]  # see models/loading.py
            models.append(model)
        return cls(models, tokenizer, **kwargs)

    @property
    def n_members(self) -> int:
        return len(self.models)

    def raw(self, texts: Sequence[str]) -> np.ndarray:
        """Raw member scores ``(B, K)``, float64."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.n_members))
        cols = [
            score_texts(m, self.tokenizer, texts, batch_size=self.batch_size) for m in self.models
        ]
        return np.stack(cols, axis=1)

    def members(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised member scores ``(B, K)``."""
        return (self.raw(texts) - self.centre) / self.scale

    def aggregate(self, members: np.ndarray) -> np.ndarray:
        """``(B, K) -> (B,)`` with this ensemble's aggregation."""
        if members.shape[0] == 0:
            return np.zeros(0)
        return aggregate_members(members, self.aggregation, lam=self.uwo_lambda)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """The ensemble reward of every text, ``(B,)``."""
        return self.aggregate(self.members(texts))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def _standard_error(values: np.ndarray, groups: np.ndarray | None) -> float:
    """SE of the mean of ``values`` over the means of ``groups`` (each value its own group
    without them): ``std(means, ddof=1) / sqrt(#groups)``; NaN with one group."""
    if groups is not None:
        _, index = np.unique(np.asarray(groups), return_inverse=True)
        values = np.bincount(index, weights=values) / np.bincount(index)
    if len(values) < 2:
        return math.nan
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def batch_signals(
    *,
    proxy: np.ndarray | None,
    completions: Sequence[str],
    members: np.ndarray | None = None,
    gold: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """What one scored batch says, with the keys of the package's evaluation rows (docs/methods.md
    §6) so the monitor reads both alike.

    Keys: ``reward/proxy`` (mean of the optimised reward) and ``signal/proxy_std`` (its
    population SD), ``reward/gold``, ``signal/gold_std`` and ``reward/gold_se`` with ``gold``
    (``reward/gold_se``: the standard error of the mean over the means of ``groups``, e.g. each
    sample's prompt; without groups each sample counts as independent, which understates it when
    samples share prompts),
    ``signal/proxy_gold_spearman`` with both (proxy and gold disagree more as hacking starts),
    ``signal/ensemble_std`` (mean over samples of the members' population SD, Coste et al. 2023)
    with ``members`` ``(B, K)``, ``length/mean`` (``lengths``, else whitespace words),
    ``diversity/distinct1`` and ``diversity/distinct2`` (Li et al. 2016).
    """
    row: dict[str, float] = {}
    if proxy is not None and len(proxy):
        row["reward/proxy"] = float(np.mean(proxy))
        row["signal/proxy_std"] = float(np.std(proxy))
    if gold is not None and len(gold):
        row["reward/gold"] = float(np.mean(gold))
        row["signal/gold_std"] = float(np.std(gold))
        row["reward/gold_se"] = _standard_error(np.asarray(gold, dtype=np.float64), groups)
        if proxy is not None and len(proxy) == len(gold) and len(gold) > 2:
            rho = _spearman(np.asarray(proxy), np.asarray(gold))
            if not math.isnan(rho):
                row["signal/proxy_gold_spearman"] = rho
    if members is not None and members.size and members.shape[1] > 1:
        row["signal/ensemble_std"] = float(members.std(axis=1).mean())
    if completions:
        if lengths is None:
            lengths = np.array([len(c.split()) for c in completions], dtype=np.float64)
        row["length/mean"] = float(np.mean(lengths))
        row["diversity/distinct1"] = distinct_n(list(completions), 1)
        row["diversity/distinct2"] = distinct_n(list(completions), 2)
    return row


class SampleWindow:
    """Samples scored one at a time (verl's and OpenRLHF's reward functions run per sample, on
    several threads) gathered into batches of ``size``: every full batch gives
    :func:`batch_signals` and, with a ``monitor``, its ``monitor/*`` metrics; :meth:`add` returns
    the latest of these, ``proxygap/``-prefixed, for the trainer's extra logs (empty until the
    first batch is full). Thread-safe."""

    def __init__(self, size: int = 64, *, monitor: Any = None) -> None:
        if size < 2:
            raise ValueError(f"window size must be >= 2, got {size}")
        self.size, self.monitor = size, monitor
        self._lock = threading.Lock()
        self._rows: list[tuple[float, float | None, float | None, str]] = []
        self.latest: dict[str, float] = {}
        self.batches = 0

    def add(
        self, proxy: float, completion: str, *, gold: float | None = None, std: float | None = None
    ) -> dict[str, float]:
        """Add one sample (its proxy reward, completion text, gold, and member SD); return the
        latest batch metrics."""
        with self._lock:
            self._rows.append((proxy, gold, std, completion))
            if len(self._rows) >= self.size:
                rows, self._rows = self._rows, []
                self.latest = self._summarise(rows)
            return dict(self.latest)

    def _summarise(self, rows: list[tuple[float, float | None, float | None, str]]) -> dict:
        golds = [g for _, g, _, _ in rows if g is not None]
        stds = [s for _, _, s, _ in rows if s is not None]
        row = batch_signals(
            proxy=np.array([p for p, _, _, _ in rows]),
            gold=np.array(golds) if len(golds) == len(rows) else None,
            completions=[c for _, _, _, c in rows],
        )
        if stds:
            row["signal/ensemble_std"] = float(np.mean(stds))
        self.batches += 1
        row["step"] = float(self.batches)
        if self.monitor is not None:
            row.update(self.monitor.update(row))
        return {f"proxygap/{k}": v for k, v in row.items() if k != "step"}


def member_std(members: np.ndarray) -> np.ndarray:
    """Population SD across members per row, ``(B,)`` (0 for a single member)."""
    return members.std(axis=1) if members.shape[1] > 1 else np.zeros(members.shape[0])


def default_monitor() -> Any:
    """The gold-free monitor of :mod:`proxygap.monitor` when it is available, else None.

    This is the one place where the adapters get a monitor by default: an object with
    ``update(row: dict[str, float]) -> dict[str, float]`` that reads the rows of
    :func:`batch_signals` (plus ``step``, ``d`` and ``kl/*`` where the trainer has them) and
    returns ``monitor/*`` metrics, among them ``monitor/score`` and ``monitor/alarm`` (0 or 1).
    """
    try:  # optional: the monitor is a separate layer-4 package
        from proxygap.monitor import Monitor
    except ImportError:
        return None
    return Monitor()
