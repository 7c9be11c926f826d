"""Study stage: the two SFT variants of the base policy and their weight soup (SALSA).

Stage ``sft`` fine-tunes two copies of the base policy (:func:`proxygap.optimize.sft.fine_tune`)
on disjoint halves of the training pairs' chosen responses, ``n_texts`` each, with seeds 0 and
1, and averages them in weight space (:func:`proxygap.mitigations.soup.weight_average`;
Chegini et al. 2024, "SALSA: Soup-based Alignment Learning for Stronger Adaptation in RLHF").
The chosen responses are gold's picks of two base samples, so the variants move towards what
gold prefers, as an SFT stage on good demonstrations does. Written to ``sft/a``, ``sft/b``
and ``sft/soup`` (model folders).
"""

from __future__ import annotations

import copy
import time

import numpy as np
from transformers import PreTrainedModel

from proxygap.config import SFTConfig
from proxygap.data.preferences import Pairs
from proxygap.mitigations.soup import weight_average
from proxygap.models.loading import load_policy
from proxygap.optimize.sft import fine_tune
from proxygap.study.context import StudyContext
from proxygap.study.data import save_model

__all__ = ["stage_sft"]


def stage_sft(ctx: StudyContext, train: Pairs, cfg: SFTConfig) -> dict[str, PreTrainedModel]:
    """``{"sft": variant a, "soup": the average of a and b}``, trained or read back."""
    folder = ctx.run.dir / "sft"
    if not ctx.run.done("sft"):
        n = cfg.n_texts
        if 2 * n > len(train):
            raise ValueError(f"sft.n_texts ({n}) x 2 exceeds the {len(train)} training pairs")
        t0 = time.perf_counter()
        variants, info = [], {}
        for i, name in enumerate(["a", "b"]):
            part = train.subset(np.arange(i * n, (i + 1) * n))
            model = copy.deepcopy(ctx.policy)
            ctx.log(f"SFT variant {name}: {n} chosen responses, seed {i}")
            hist = fine_tune(
                model, ctx.tokenizer, part.prompt, part.chosen, epochs=cfg.epochs, lr=cfg.lr,
                batch_size=cfg.batch_size, seed=i,
            )  # fmt: skip
            save_model(model, ctx.tokenizer, folder / name)
            variants.append(model)
            info[name] = {"first_loss": hist.loss[0], "final_loss": float(np.mean(hist.loss[-10:]))}
        save_model(weight_average(variants), ctx.tokenizer, folder / "soup")
        ctx.run.mark_done("sft", info | {"seconds": time.perf_counter() - t0})
    device = ctx.cfg.runtime.device
    return {
        "sft": load_policy(folder / "a").to(device).eval(),  # type: ignore[arg-type]  # wrapped .to: see models.loading
        "soup": load_policy(folder / "soup").to(device).eval(),  # type: ignore[arg-type]  # wrapped .to: see models.loading
    }
