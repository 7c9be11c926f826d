"""The overoptimization-detection study's config: a corpus of labelled RL runs (section
``detect``), built and scored by :mod:`proxygap.study.detect`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from proxygap.optimize.rl import RLConfig
from proxygap.schema import NonNegFloat, PosFloat, Strict, safe_name

__all__ = ["DetectConfig", "DetectFamily"]


class DetectFamily(Strict):
    """One configuration family of the corpus, run once per seed.

    ``reward`` is what the policy optimises: the name of one of the study's proxies (its
    members aggregated by ``aggregation`` when set, else as the proxy's config says), ``gold``
    (a benign control: optimising the true reward), or ``gold_noisy`` (gold plus independent
    noise of ``noise`` gold standard deviations per text: an accurate proxy). ``bonus_words``
    and ``bonus`` add ``bonus`` per occurrence of those words to the reward (a keyword-driven
    proxy error, a different hack from the learned proxies'). ``transform`` applies a reward
    transform of the mitigation registry that needs no study inputs (e.g. ``length_penalty``);
    ``settings`` overrides fields of the study's RL settings (``algo``, ``kl_coef``, ``lr``...).
    """

    name: str
    reward: str
    aggregation: Literal["mean", "wco", "uwo"] | None = None
    noise: NonNegFloat = 0.3
    bonus_words: list[str] = Field(default_factory=list)
    bonus: float = 0.0
    transform: dict[str, Any] | None = None
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return safe_name(v, "family name")

    @model_validator(mode="after")
    def _consistent(self) -> DetectFamily:
        if self.bonus and not self.bonus_words:
            raise ValueError(f"family {self.name!r}: bonus needs bonus_words")
        if self.transform is not None and "method" not in self.transform:
            raise ValueError(f"family {self.name!r}: transform needs a 'method'")
        return self


class DetectConfig(Strict):
    """The corpus and its splits.

    Every family runs with every seed of ``seeds``. Held-out runs, on which every detector is
    reported: by seed, the runs with a seed in ``test_seeds``; by family, the runs of
    ``test_families``. Detectors (the proxygap detector's weights and every detector's alarm
    threshold) are fitted on the other runs only. The monitor's ensemble and latent signals read
    the members and the first member's hidden states of ``monitor_proxy``. The forecaster gets
    gold on the evaluator's samples (``eval_prompts x eval_samples_per_prompt`` of ``settings``,
    the gold budget) at the evaluation points up to its forecast.
    """

    settings: RLConfig = Field(default_factory=RLConfig)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=2)
    test_seeds: list[int] = Field(default_factory=lambda: [3, 4], min_length=1)
    test_families: list[str] = Field(default_factory=list)
    monitor_proxy: str
    families: list[DetectFamily] = Field(min_length=2)
    forecast_level: PosFloat = 0.8

    @model_validator(mode="after")
    def _splits(self) -> DetectConfig:
        names = [f.name for f in self.families]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"detect.families: repeated names {dup}")
        unknown = sorted(set(self.test_families) - set(names))
        if unknown:
            raise ValueError(f"detect.test_families: unknown {unknown}; families: {names}")
        if not set(self.test_seeds) < set(self.seeds):
            raise ValueError("detect.test_seeds must be a proper subset of detect.seeds")
        if set(self.test_families) == set(names):
            raise ValueError("detect.test_families must leave at least one family to train on")
        for f in self.families:
            bad = sorted(set(f.settings) - set(RLConfig.model_fields))
            if bad:
                raise ValueError(f"detect.families[{f.name}].settings: unknown fields {bad}")
            RLConfig.model_validate(self.settings.model_dump() | f.settings)
        return self

    def run_settings(self, family: DetectFamily, seed: int) -> RLConfig:
        """The RL settings of one run: the study's, the family's overrides, the seed."""
        return RLConfig.model_validate(
            self.settings.model_dump() | family.settings | {"seed": seed}
        )
