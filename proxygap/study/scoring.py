"""The study's trained proxies as scorers: loaded from the run folder once, normalised on the
base-policy reference samples (:class:`proxygap.rewards.proxy.ProxyScorer`).

Best-of-n, RL, DAA and the mitigation study all score through :func:`proxy_scorer`, so every
stage sees a proxy with the same members, tokenizer, batch size and reference statistics.
"""

from __future__ import annotations

from transformers import PreTrainedModel

from proxygap.config import ProxyConfig
from proxygap.models.loading import load_reward_model, load_tokenizer
from proxygap.rewards.proxy import ProxyScorer
from proxygap.study.context import StudyContext, reference_texts

__all__ = ["proxy_config", "proxy_members", "proxy_scorer"]


def proxy_config(ctx: StudyContext, name: str) -> ProxyConfig:
    """The config of the study's proxy ``name``."""
    return next(p for p in ctx.cfg.proxies if p.name == name)


def proxy_members(ctx: StudyContext, proxy: ProxyConfig) -> list[PreTrainedModel]:
    """Load the trained members of ``proxy`` from the run folder (or its ``path``)."""
    if proxy.path:
        return [load_reward_model(proxy.path, trust_remote_code=ctx.cfg.task.trust_remote_code)]
    return [
        load_reward_model(ctx.run.dir / "proxies" / proxy.name / f"member-{k}")
        for k in range(proxy.ensemble)
    ]


def proxy_scorer(ctx: StudyContext, name: str) -> ProxyScorer:
    """The proxy ``name`` (trained, stage ``proxy:<name>``) as a scorer, loaded on first use."""
    if name not in ctx.proxies:
        proxy = proxy_config(ctx, name)
        tokenizer = ctx.tokenizer
        if proxy.path:
            tokenizer = load_tokenizer(proxy.path, trust_remote_code=ctx.cfg.task.trust_remote_code)
        ctx.proxies[name] = ProxyScorer(
            name,
            proxy_members(ctx, proxy),
            tokenizer,
            reference_texts(ctx),
            aggregation=proxy.aggregation,
            uwo_lambda=proxy.uwo_lambda,
            batch_size=ctx.cfg.runtime.score_batch_size,
        )
    return ctx.proxies[name]
