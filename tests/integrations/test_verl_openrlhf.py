"""verl and OpenRLHF adapters, called exactly as verl 0.9.1's reward managers and OpenRLHF
0.11.2's ``reward_func`` loader call them (their documented contracts; neither package is a test
dependency). Where verl or OpenRLHF is importable, their own calling code runs the adapters too.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from proxygap.integrations.openrlhf import make_reward_func, strip_special
from proxygap.integrations.scoring import EnsembleScorer
from proxygap.integrations.service import RewardService, ServiceConfigError
from proxygap.integrations.verl import make_compute_score


class Half:
    """A stand-in monitor: alarm when the window's mean proxy is below 0."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def update(self, row: dict[str, float]) -> dict[str, float]:
        self.rows.append(row)
        return {"monitor/score": 0.5, "monitor/alarm": float(row["reward/proxy"] < 0)}


@pytest.fixture(scope="module")
def scorer(member_paths) -> EnsembleScorer:
    return EnsembleScorer.from_folders(member_paths, aggregation="wco")


def gold_len(texts: list[str]) -> list[float]:
    return [float(len(t.split())) for t in texts]


def test_verl_per_sample_and_batch(scorer):
    service = RewardService(scorer, gold=gold_len, window=2, monitor=Half())
    score = make_compute_score(service)
    # as NaiveRewardManager calls it: keyword arguments, the decoded response only
    first = score(data_source="reviews", solution_str="was great .", ground_truth=None,
                  extra_info={"prompt": "the movie", "num_turns": None})  # fmt: skip
    expected = scorer(["the movie was great ."])[0]  # prompt + " " + response, WCO
    assert first["score"] == pytest.approx(expected, abs=1e-9)
    assert first["proxygap/gold"] == 5.0  # words of "the movie was great ."
    assert math.isnan(first["proxygap/monitor/score"]) and first["proxygap/monitor/alarm"] == 0
    second = score(data_source="reviews", solution_str="bad", ground_truth=None, extra_info={})
    assert second["score"] == pytest.approx(scorer(["bad"])[0], abs=1e-9)  # no prompt given
    assert set(first) == set(second)  # verl appends every key for every sample
    assert second["proxygap/monitor/score"] == 0.5  # the window of 2 is full
    (row,) = service.window.monitor.rows
    assert row["reward/proxy"] == pytest.approx((first["score"] + second["score"]) / 2)
    assert row["reward/gold"] == pytest.approx((5.0 + 1.0) / 2)
    # BatchRewardManager: plural keyword arguments, one dict per sample, same scores
    batch = make_compute_score(service, batch=True)
    out = batch(data_sources=["r", "r"], solution_strs=["was great .", "bad"],
                ground_truths=[None, None], extra_infos=[{"prompt": "the movie"}, {}])  # fmt: skip
    assert [o["score"] for o in out] == pytest.approx([first["score"], second["score"]])


def test_openrlhf_reward_func(scorer, tok):
    service = RewardService(scorer, window=2, monitor=None)
    reward_func = make_reward_func(service)
    # OpenRLHF decodes queries with special tokens; one sample per call in 0.11.2
    query = f"{tok.bos_token} the movie was great . {tok.eos_token}"
    out = reward_func([query], [f"{tok.bos_token} the movie"], ["label"])
    assert out["rewards"].shape == (1,) and out["rewards"].dtype == torch.float32
    assert out["rewards"].item() == pytest.approx(scorer(["the movie was great ."])[0], abs=1e-6)
    assert torch.equal(out["scores"], out["rewards"])
    assert set(out["extra_logs"]) == {"proxygap/proxy", "proxygap/ensemble_std"}
    assert all(isinstance(v, float) for v in out["extra_logs"].values())
    text, response = strip_special(tok)(query, f"{tok.bos_token} the movie")
    assert (text, response) == ("the movie was great .", "was great .")


def test_service_from_env_names_the_bad_variable(member_paths, tmp_path):
    paths = os.pathsep.join(str(p) for p in member_paths)
    with pytest.raises(ServiceConfigError, match="PROXYGAP_REWARD_MODELS is not set"):
        RewardService.from_env({})
    with pytest.raises(ServiceConfigError, match="PROXYGAP_AGGREGATION='max'"):
        RewardService.from_env({"PROXYGAP_REWARD_MODELS": paths, "PROXYGAP_AGGREGATION": "max"})
    with pytest.raises(ServiceConfigError, match="PROXYGAP_UWO_LAMBDA='x' is not a float"):
        RewardService.from_env({"PROXYGAP_REWARD_MODELS": paths, "PROXYGAP_UWO_LAMBDA": "x"})
    with pytest.raises(ServiceConfigError, match="PROXYGAP_GOLD='nogold'"):
        RewardService.from_env({"PROXYGAP_REWARD_MODELS": paths, "PROXYGAP_GOLD": "nogold"})
    ref = tmp_path / "ref.txt"
    ref.write_text("the movie was bad .\ni loved it .\n")
    service = RewardService.from_env(
        {"PROXYGAP_REWARD_MODELS": paths, "PROXYGAP_AGGREGATION": "uwo",
         "PROXYGAP_REFERENCE": str(ref), "PROXYGAP_GOLD": "math:fsum", "PROXYGAP_WINDOW": "8"}
    )  # fmt: skip
    assert service.scorer.aggregation == "uwo" and service.window.size == 8
    # standardised on the two reference texts: their member scores have mean 0 and SD 1
    z = service.scorer.members(["the movie was bad .", "i loved it ."])
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-9)


@pytest.mark.skipif(
    importlib.util.find_spec("verl") is None or importlib.util.find_spec("tensordict") is None,
    reason="verl is not installed",
)
def test_real_verl_naive_and_batch_managers(scorer, tok):
    from verl import DataProto
    from verl.workers.reward_manager.batch import BatchRewardManager
    from verl.workers.reward_manager.naive import NaiveRewardManager

    prompts = tok(["<bos> the movie", "<bos> the plot"], add_special_tokens=False)["input_ids"]
    responses = tok(["was great .", "is bad ."], add_special_tokens=False)["input_ids"]
    P, R = max(map(len, prompts)), max(map(len, responses))
    pad = tok.pad_token_id
    p_ids = torch.tensor([[pad] * (P - len(p)) + p for p in prompts])
    r_ids = torch.tensor([r + [pad] * (R - len(r)) for r in responses])
    attn = torch.cat([p_ids != pad, r_ids != pad], dim=1).long()
    data = DataProto.from_dict(
        tensors={"prompts": p_ids, "responses": r_ids, "attention_mask": attn},
        non_tensors={
            "data_source": np.array(["reviews"] * 2, dtype=object),
            "reward_model": np.array([{"ground_truth": None}] * 2, dtype=object),
            "extra_info": np.array([{"prompt": "the movie"}, {"prompt": "the plot"}], dtype=object),
        },
    )
    expected = scorer(["the movie was great .", "the plot is bad ."])
    service = RewardService(scorer, window=2, monitor=None)
    for manager in (
        NaiveRewardManager(tok, 0, compute_score=make_compute_score(service)),
        BatchRewardManager(tok, 0, compute_score=make_compute_score(service, batch=True)),
    ):
        out = manager(data, return_dict=True)
        last = attn[:, P:].sum(dim=1) - 1
        got = out["reward_tensor"][torch.arange(2), last]
        assert got.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
        assert list(out["reward_extra_info"]["proxygap/proxy"]) == pytest.approx(expected)


@pytest.mark.skipif(importlib.util.find_spec("openrlhf") is None, reason="OpenRLHF not installed")
def test_real_openrlhf_loads_the_file(member_paths, monkeypatch, tok):
    import asyncio

    from openrlhf.utils.agent import SingleTurnAgentExecutor

    import proxygap.integrations.openrlhf as module

    monkeypatch.setenv("PROXYGAP_REWARD_MODELS", os.pathsep.join(map(str, member_paths)))
    executor = SingleTurnAgentExecutor(remote_rm_url=str(Path(module.__file__)))
    query = f"{tok.bos_token} the movie was great ."
    (info,) = asyncio.run(executor._fetch_rewards_via_func([query], ["the movie"], [None]))
    expected = EnsembleScorer.from_folders(member_paths)(["the movie was great ."])[0]
    assert info["rewards"].item() == pytest.approx(expected, abs=1e-6)
    assert "proxygap/ensemble_std" in info["extra_logs"]
