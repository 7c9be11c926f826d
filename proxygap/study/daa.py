"""Study stage 7: direct alignment algorithms over a sweep of betas (Rafailov et al. 2024).

Each ``(loss, beta)`` is one run (stage ``daa:<loss>-<beta>``): a fresh copy of the start policy
trained with :func:`proxygap.optimize.daa.train_daa` on the study's gold-labelled pairs
(relabelled with ``daa.label_noise``), evaluated at several checkpoints inside the first epoch.
Reference log-probs are computed once and shared by every run. The start policy is also the
loss's reference model: the base policy, or (``daa.reference``) the first SFT variant or the
soup of the two (SALSA, Chegini et al. 2024; :mod:`proxygap.study.sft`). Gold, proxy and KL are
always measured against the base policy, so runs with another start show it at step 0.
"""

from __future__ import annotations

import copy
import json

import numpy as np

from proxygap.data.preferences import Pairs, relabel
from proxygap.optimize.daa import DAAConfig, DAAResult, daa_evaluator, prepare_pairs, train_daa
from proxygap.optimize.daa_sweep import SweepResult, summarise_sweep
from proxygap.store.atomic import atomic_write_json
from proxygap.study.env import Env
from proxygap.study.rl import proxy_scorer
from proxygap.study.sft import stage_sft


def stage_daa(env: Env, train: Pairs, held: Pairs, gold_scale: float) -> SweepResult | None:
    """Run (or read back) every DAA run of the study; None if the study has no ``daa``."""
    spec = env.cfg.daa
    if spec is None:
        return None
    runs: list[tuple[str, float, DAAResult]] = []
    todo = [
        (loss, beta)
        for loss, betas in spec.betas.items()
        for beta in betas
        if not env.run.done(f"daa:{loss}-{beta:g}")
    ]
    prepared = evaluator = ref = None
    start = env.policy
    if todo:
        if spec.reference != "base":
            assert env.cfg.sft is not None  # the config check guarantees it
            start = stage_sft(env, train, env.cfg.sft)[spec.reference]
        n = spec.n_pairs or len(train)
        pairs = relabel(train.subset(np.arange(n)), noise=spec.label_noise, seed=env.cfg.seed + 11)
        ref = copy.deepcopy(start).eval().requires_grad_(False)
        prepared = (
            prepare_pairs(ref, env.tokenizer, pairs),
            prepare_pairs(ref, env.tokenizer, held),
        )
        proxy = None
        if spec.proxy is not None:
            cfg_proxy = next(p for p in env.cfg.proxies if p.name == spec.proxy)
            proxy = proxy_scorer(env, cfg_proxy, held)
        evaluator = daa_evaluator(
            env.policy,
            env.tokenizer,
            task=env.task,
            proxy=proxy,
            cfg=spec.settings,
            gold_scale=gold_scale,
            seed=env.cfg.seed * 1000 + 7,
        )
    for loss, betas in spec.betas.items():
        for beta in betas:
            name = f"{loss}-{beta:g}"
            folder = env.run.dir / "daa" / name
            if env.run.done(f"daa:{name}"):
                saved = json.loads((folder / "result.json").read_text())
                runs.append((loss, beta, DAAResult(saved["history"], saved["examples"])))
                continue
            assert prepared is not None and evaluator is not None and ref is not None
            cfg = DAAConfig.model_validate(
                {**spec.settings.model_dump(), "loss": loss, "beta": beta}
            )
            env.log(f"DAA {loss} beta {beta:g}")
            policy = copy.deepcopy(start).requires_grad_(True)
            result = train_daa(
                policy,
                ref,
                env.tokenizer,
                *prepared,
                cfg=cfg,
                evaluator=evaluator,
                log=lambda *_: None,
            )
            atomic_write_json(
                folder / "result.json", {"history": result.history, "examples": result.examples}
            )
            env.run.mark_done(f"daa:{name}", {"loss": loss, "beta": beta})
            runs.append((loss, beta, result))
    sweep = summarise_sweep(runs)
    atomic_write_json(
        env.run.path("daa", "summary.json"),
        {
            "fits": {
                loss: {k: (f.as_dict() if f else None) for k, f in fits.items()}
                for loss, fits in sweep.fits.items()
            },
            "hump": {
                loss: {**h.__dict__, "turns_down": h.turns_down} for loss, h in sweep.hump.items()
            },
        },
    )
    return sweep
