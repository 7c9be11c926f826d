"""Study stage 7: direct alignment algorithms over a sweep of betas (Rafailov et al. 2024).

Each ``(loss, beta)`` is one run (stage ``daa:<loss>-<beta>``): a fresh copy of the start policy
trained with :func:`proxygap.optimize.daa.train_daa` on the study's gold-labelled pairs
(relabelled with ``daa.label_noise``), evaluated at several checkpoints inside the first epoch.
Reference log-probs are computed once and shared by every run. The start policy is also the
loss's reference model: the base policy, or (``daa.reference``) the first SFT variant or the
soup of the two (SALSA, Chegini et al. 2024; :mod:`proxygap.study.sft`). Gold, proxy and KL are
always measured against the base policy, so runs with another start show it at step 0.

Like RL runs, a DAA run keeps its newest checkpoint (taken before each evaluation) in
``daa/<name>/checkpoints/``; a rerun after a kill continues from it with the same numbers, and
the checkpoints are deleted once the run's results are written.
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np

from proxygap.data.preferences import Pairs, relabel
from proxygap.optimize.daa import DAAConfig, daa_evaluator, prepare_pairs, train_daa
from proxygap.optimize.daa_sweep import DAASweep, summarise_sweep
from proxygap.optimize.loop import LoopResult
from proxygap.seeds import study_seed
from proxygap.store.atomic import atomic_write_json
from proxygap.store.faults import stage_faults
from proxygap.study.context import StudyContext, check_measurements
from proxygap.study.scoring import proxy_scorer
from proxygap.study.sft import stage_sft
from proxygap.study.watch import watchers


def stage_daa(ctx: StudyContext, train: Pairs) -> DAASweep | None:
    """Run (or read back) every DAA run of the study; None if the study has no ``daa``."""
    spec = ctx.cfg.daa
    if spec is None:
        return None
    runs: list[tuple[str, float, LoopResult]] = []
    todo = [
        (loss, beta)
        for loss, betas in spec.betas.items()
        for beta in betas
        if not ctx.run.done(f"daa:{loss}-{beta:g}")
    ]
    prepared = evaluator = ref = None
    start = ctx.policy
    if todo:
        if spec.reference != "base":
            assert ctx.cfg.sft is not None  # the config check guarantees it
            start = stage_sft(ctx, train, ctx.cfg.sft)[spec.reference]
        n = spec.n_pairs or len(train)
        pairs = relabel(train.subset(np.arange(n)), noise=spec.label_noise, seed=ctx.cfg.seed + 11)
        ref = copy.deepcopy(start).eval().requires_grad_(False)
        prepared = (
            prepare_pairs(ref, ctx.tokenizer, pairs),
            prepare_pairs(ref, ctx.tokenizer, ctx.heldout),
        )
        scorer = None if spec.proxy is None else proxy_scorer(ctx, spec.proxy)
        evaluator = daa_evaluator(
            ctx.policy,
            ctx.tokenizer,
            task=ctx.task,
            proxy=None if scorer is None else scorer.reward,
            cfg=spec.settings,
            gold_scale=ctx.gold_scale,
            seed=study_seed(ctx.cfg.seed, "policy_eval"),
            # the monitor's ensemble and latent signals, as in RL runs
            members=scorer.standardised if scorer is not None and scorer.n_members > 1 else None,
            embed=None if scorer is None else scorer.embed,
        )
    for loss, betas in spec.betas.items():
        for beta in betas:
            name = f"{loss}-{beta:g}"
            folder = ctx.run.dir / "daa" / name
            if ctx.run.done(f"daa:{name}"):
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
                saved = json.loads((folder / "result.json").read_text())
                done = LoopResult(history=saved["history"], examples=saved["examples"])
                runs.append((loss, beta, done))
                continue
            assert prepared is not None and evaluator is not None and ref is not None
            cfg = DAAConfig.model_validate(
                {**spec.settings.model_dump(), "loss": loss, "beta": beta}
            )
            ctx.log(f"DAA {loss} beta {beta:g}")
            with stage_faults(f"daa:{name}", ctx.run.dir):
                policy = copy.deepcopy(start).requires_grad_(True)
                result = train_daa(
                    policy,
                    ref,
                    ctx.tokenizer,
                    *prepared,
                    cfg=cfg,
                    evaluator=evaluator,
                    log=lambda *_: None,
                    watch=watchers(ctx, run=f"daa/{name}", config=cfg.model_dump(mode="json")),
                    checkpoint_dir=folder / "checkpoints",
                    resume=True,
                    keep_checkpoints=1,
                )
                if result.resumed_at is not None:
                    ctx.log(f"DAA {name} resumed at step {result.resumed_at} from its checkpoint")
                check_measurements(result.history, f"daa:{name}")
                atomic_write_json(
                    folder / "result.json", {"history": result.history, "examples": result.examples}
                )
                ctx.run.mark_done(f"daa:{name}", {"loss": loss, "beta": beta})
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
            runs.append((loss, beta, result))
    sweep = summarise_sweep(runs)
    atomic_write_json(
        ctx.run.path("daa", "summary.json"),
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
