"""The reward-model scaling study's config (section ``scaling``), run by
:mod:`proxygap.study.scaling`: every proxy of the study (a model size) is trained on every data
size with every seed, and its best-of-n curve is measured on that seed's own pool."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from proxygap.config.sections import BonConfig
from proxygap.optimize.rl import RLConfig
from proxygap.schema import OpenUnitFloat, PosInt, Strict

__all__ = ["ScalingConfig", "ScalingRLConfig", "check_scaling"]

_Seed = Annotated[int, Field(ge=0, le=99)]


class ScalingRLConfig(Strict):
    """Online RL against a subset of the study's trained proxies (Gao et al. 2023, fig. 3b).

    For every size of ``sizes`` and seed of ``seeds``, one run of ``settings`` optimises a
    fresh copy of the base policy against the reward model that size trained on ``n_pairs``
    pairs with that seed for best-of-n (read back, not retrained). All sizes of one seed share
    the training prompts, the held-out evaluation prompts and the RL seed.
    """

    sizes: list[str] = Field(min_length=1, description="names of the proxies (sizes) to run RL on")
    seeds: list[_Seed] = Field(
        min_length=2, description="seeds of scaling.seeds to run (each its own proxy and RL seed)"
    )
    n_pairs: PosInt | None = Field(
        default=None,
        description="which of scaling.n_pairs the proxies learned from; null: the largest",
    )
    settings: RLConfig = Field(
        default_factory=RLConfig, description="the RL hyperparameters every run shares"
    )

    @field_validator("sizes", "seeds")
    @classmethod
    def _distinct(cls, v: list[Any]) -> list[Any]:
        if len(set(v)) != len(v):
            raise ValueError(f"values must be distinct, got {v}")
        return v


class ScalingConfig(Strict):
    """Proxy size x data size x seed, best-of-n on gold (Gao et al. 2023, §3.2 and fig. 3).

    The study's ``proxies`` are the sizes (their ``n_embd``, ``n_layer``, ``n_head``, noise and
    training settings); each is trained on the first ``n`` training pairs of a seed's own
    shuffle for every ``n`` of ``n_pairs``. A seed fixes which pairs, the label noise, the
    initialisation and data order, and a best-of-n pool of its own (``bon``: fresh held-out
    prompts per seed); all sizes of one seed share them, so sizes are compared on the same data
    and pool. Intervals: a bootstrap over each pool's prompts (``n_boot`` resamples) and, for
    trends against log parameters, a t interval over seeds.
    """

    n_pairs: list[PosInt] = Field(
        min_length=1, description="training-set sizes; every proxy is trained on each"
    )
    seeds: list[_Seed] = Field(
        default_factory=lambda: [0, 1, 2],
        min_length=2,
        description="seeds (pairs drawn, label noise, initialisation, the best-of-n pool)",
    )
    bon: BonConfig = Field(
        default_factory=lambda: BonConfig(n_prompts=32, pool_size=512, n_points=25),
        description="each seed's best-of-n pool and curve",
    )
    n_boot: Annotated[int, Field(ge=100)] = Field(
        default=1000, description="bootstrap resamples of the prompts behind every interval"
    )
    level: OpenUnitFloat = Field(default=0.95, description="coverage of every interval")
    rl: ScalingRLConfig | None = Field(
        default=None, description="RL against some of the trained proxies; null: best-of-n only"
    )

    @field_validator("n_pairs", "seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"values must be distinct, got {v}")
        return sorted(v)


_ALONGSIDE = {"name", "seed", "task", "preferences", "proxies", "monitor", "runtime", "scaling"}


def check_scaling(cfg: Any) -> None:
    """A :class:`~proxygap.config.StudyConfig` with a ``scaling`` section is a scaling study:
    its proxies are sizes trained per cell (one member, no file, gold labels, no ``n_pairs`` of
    their own), of at least two distinct shapes, and no other stage that would need them
    trained once (``bon``, ``rl``, ...) is set."""
    spec = cfg.scaling
    if spec is None:
        return
    others = [k for k in type(cfg).model_fields if k not in _ALONGSIDE and getattr(cfg, k)]
    if others:
        raise ValueError(
            f"scaling: a scaling study trains its proxies per cell and measures best-of-n on "
            f"its own pools (scaling.bon); set {others} to null"
        )
    for p in cfg.proxies:
        bad = [
            f"{field}: {value!r}"
            for field, value, ok in (
                ("ensemble", p.ensemble, p.ensemble == 1),
                ("path", p.path, p.path is None),
                ("target", p.target, p.target == "gold"),
                ("n_pairs", p.n_pairs, p.n_pairs is None),
            )
            if not ok
        ]
        if bad:
            raise ValueError(
                f"scaling: proxy {p.name!r} is a model size trained on every scaling.n_pairs "
                f"(one member, gold labels); it cannot set {', '.join(bad)}"
            )
    shapes = {(p.n_embd, p.n_layer, p.n_head) for p in cfg.proxies}
    if len(shapes) < 2:
        raise ValueError("scaling: the proxies must hold at least two distinct model sizes")
    if max(spec.n_pairs) > cfg.preferences.n_pairs:
        raise ValueError(
            f"scaling.n_pairs {spec.n_pairs} exceeds preferences.n_pairs "
            f"({cfg.preferences.n_pairs})"
        )
    if spec.rl is not None:
        _check_rl(spec, [p.name for p in cfg.proxies])


def _check_rl(spec: ScalingConfig, names: list[str]) -> None:
    rl = spec.rl
    assert rl is not None
    unknown = [s for s in rl.sizes if s not in names]
    if unknown:
        raise ValueError(f"scaling.rl.sizes {unknown} are not proxies of the study ({names})")
    missing = [s for s in rl.seeds if s not in spec.seeds]
    if missing:
        raise ValueError(f"scaling.rl.seeds {missing} are not in scaling.seeds {spec.seeds}")
    if rl.n_pairs is not None and rl.n_pairs not in spec.n_pairs:
        raise ValueError(
            f"scaling.rl.n_pairs {rl.n_pairs} is not in scaling.n_pairs {spec.n_pairs}"
        )
