"""The overoptimization-detection study's config: a corpus of labelled runs (section
``detect``), built and scored by :mod:`proxygap.study.detect`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from proxygap.optimize.daa import DAAConfig
from proxygap.optimize.rl import RLConfig
from proxygap.schema import NonNegFloat, PosFloat, PosInt, Strict, safe_name

__all__ = ["DetectConfig", "DetectDAA", "DetectFamily"]

_CORPUS_SETS = ("eval_at", "eval_prompts", "eval_samples_per_prompt", "seed")
"""DAA settings the corpus sets itself, the same for every family (see
:meth:`DetectConfig.daa_settings`)."""


def _check_overrides(model: type[Strict], overrides: dict[str, Any], where: str) -> None:
    """A ValueError naming ``where`` for override keys that are not fields of ``model``."""
    bad = sorted(set(overrides) - set(model.model_fields))
    if bad:
        raise ValueError(f"{where}: unknown fields {bad}")


class DetectDAA(Strict):
    """A family of direct-alignment runs (:func:`proxygap.optimize.daa.train_daa`): the first
    ``n_pairs`` of the study's preference pairs, their labels flipped with ``label_noise``, and
    ``settings`` overriding :class:`~proxygap.optimize.daa.DAAConfig` (``loss``, ``beta``,
    ``lr``, ``epochs``...); evaluated at ``eval_at`` of the run on the corpus's evaluation
    prompts, its implicit reward's margins on the first ``heldout_pairs`` held-out pairs."""

    n_pairs: PosInt = 2000
    heldout_pairs: PosInt = 128
    label_noise: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.25
    settings: dict[str, Any] = Field(default_factory=lambda: {"loss": "dpo"})
    eval_at: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: [i / 10 for i in range(11)], min_length=3
    )

    @model_validator(mode="after")
    def _known(self) -> DetectDAA:
        _check_overrides(DAAConfig, self.settings, "daa.settings")
        fixed = sorted(set(self.settings) & set(_CORPUS_SETS))
        if fixed:
            raise ValueError(
                f"daa.settings: {fixed} are set by the corpus (daa.eval_at, "
                "detect.settings.eval_prompts and eval_samples_per_prompt, the run's seed)"
            )
        DAAConfig.model_validate(self.settings)
        return self


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
    With ``daa`` the family's runs are direct alignment on preference pairs instead of RL
    (:class:`DetectDAA`); ``reward`` then names the proxy its evaluations score, the reward
    model a practitioner would watch.
    """

    name: str
    reward: str
    aggregation: Literal["mean", "wco", "uwo"] | None = None
    noise: NonNegFloat = 0.3
    bonus_words: list[str] = Field(default_factory=list)
    bonus: float = 0.0
    transform: dict[str, Any] | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    daa: DetectDAA | None = None

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
        if self.daa is not None and (
            self.reward in ("gold", "gold_noisy") or self.transform or self.bonus
            or self.aggregation or self.settings
        ):  # fmt: skip
            raise ValueError(
                f"family {self.name!r}: a daa family trains on preference pairs; its reward "
                "names a proxy to watch, without aggregation, bonus, transform or RL settings"
            )
        return self


class DetectConfig(Strict):
    """The corpus and its splits.

    Every family runs with every seed of ``seeds``, which fall into three disjoint splits:
    the *training* seeds (those in neither list below), on which detectors (the proxygap
    detector's weights and every detector's alarm threshold) are fitted; the *validation*
    seeds ``validation_seeds``, scored as often as a developer likes while choosing settings;
    and the *test* seeds ``test_seeds``, the headline, to be scored once and never used to
    choose anything. The family split fits on the training seeds of the families not in
    ``test_families`` and scores those families on the validation and on the test seeds. The
    monitor's ensemble and latent signals read the members and the first member's hidden states
    of ``monitor_proxy``. The forecaster (:func:`proxygap.monitor.forecast.forecast_peak` with
    ``forecast_method``) gets gold on the samples of the first ``forecast_prompts`` evaluation
    prompts (``x eval_samples_per_prompt`` of ``settings``: the gold budget; all
    ``eval_prompts`` when None) at the evaluation points up to its forecast, while the labels
    read gold on all of them.
    """

    settings: RLConfig = Field(default_factory=RLConfig)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=2)
    validation_seeds: list[int] = Field(default_factory=list)
    test_seeds: list[int] = Field(default_factory=lambda: [3, 4], min_length=1)
    test_families: list[str] = Field(default_factory=list)
    monitor_proxy: str
    families: list[DetectFamily] = Field(min_length=2)
    forecast_prompts: PosInt | None = Field(
        default=None,
        description="the forecaster's gold budget: gold on the samples of the first "
        "forecast_prompts evaluation prompts only (None: on all of them)",
    )
    forecast_level: PosFloat = 0.8
    forecast_method: Literal["argmax", "plateau", "quadratic"] = "plateau"

    @model_validator(mode="after")
    def _splits(self) -> DetectConfig:
        names = [f.name for f in self.families]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"detect.families: repeated names {dup}")
        unknown = sorted(set(self.test_families) - set(names))
        if unknown:
            raise ValueError(f"detect.test_families: unknown {unknown}; families: {names}")
        seeds, val, test = set(self.seeds), set(self.validation_seeds), set(self.test_seeds)
        if not test <= seeds or not val <= seeds:
            raise ValueError(
                "detect.test_seeds and detect.validation_seeds must be in detect.seeds"
            )
        if val & test:
            raise ValueError(f"detect: seeds {sorted(val & test)} are both validation and test")
        if not seeds - val - test:
            raise ValueError("detect.seeds must leave at least one training seed")
        if self.forecast_prompts is not None and self.forecast_prompts > self.settings.eval_prompts:
            raise ValueError(
                f"detect.forecast_prompts ({self.forecast_prompts}) exceeds "
                f"detect.settings.eval_prompts ({self.settings.eval_prompts})"
            )
        if set(self.test_families) == set(names):
            raise ValueError("detect.test_families must leave at least one family to train on")
        for f in self.families:
            _check_overrides(RLConfig, f.settings, f"detect.families[{f.name}].settings")
            RLConfig.model_validate(self.settings.model_dump() | f.settings)
        return self

    @property
    def train_seeds(self) -> list[int]:
        """The seeds detectors are fitted on: neither validation nor test."""
        held = set(self.validation_seeds) | set(self.test_seeds)
        return [s for s in self.seeds if s not in held]

    def run_settings(self, family: DetectFamily, seed: int) -> RLConfig:
        """The RL settings of one run: the study's, the family's overrides, the seed."""
        return RLConfig.model_validate(
            self.settings.model_dump() | family.settings | {"seed": seed}
        )

    def daa_settings(self, family: DetectFamily, seed: int) -> DAAConfig:
        """The DAA settings of one run of a ``daa`` family: its overrides, its evaluation
        points, the corpus's evaluation prompts and samples, the seed."""
        assert family.daa is not None
        return DAAConfig.model_validate(
            family.daa.settings
            | {"eval_at": family.daa.eval_at, "eval_prompts": self.settings.eval_prompts,
               "eval_samples_per_prompt": self.settings.eval_samples_per_prompt, "seed": seed}
        )  # fmt: skip
