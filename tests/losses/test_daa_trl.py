"""The direct-alignment losses against TRL as an independent implementation: DPOTrainer's and
CPOTrainer's loss code on identical inputs (TRL 1.16)."""

from __future__ import annotations

import collections
import types
import warnings

import pytest
import torch

from proxygap.losses.daa import (
    PairBatchLogps,
    compute_daa_loss,
    dpo_loss,
    ipo_loss,
    simpo_loss,
)
from proxygap.losses.sequence import sequence_logprobs, token_logprobs

F64 = torch.float64
TOL = {"rtol": 0.0, "atol": 1e-12}


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=F64)


# Two pairs used by the hand-derived tests.
# pair 0: chosen log-ratio -3.0 - (-3.5) = 0.5, rejected log-ratio -4.0 - (-3.5) = -0.5, so h = 1.
# pair 1: chosen log-ratio -2.0 - (-1.0) = -1.0, rejected log-ratio -1.0 - (-1.0) = 0,  so h = -1.
PC, RC = t(-3.0, -2.0), t(-3.5, -1.0)
PR, RR = t(-4.0, -1.0), t(-3.5, -1.0)
LOG1P_EXP_M05 = 0.4740769841801067  # log(1 + e^{-0.5}) = -log sigma(0.5)
LOG1P_EXP_P05 = 0.9740769841801067  # log(1 + e^{0.5}) = 0.5 + log(1 + e^{-0.5})


# --------------------------------------------------------------------------- TRL as oracle


@pytest.fixture(scope="module")
def trl():
    trl = pytest.importorskip("trl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.cpo import CPOTrainer
        from trl.trainer.dpo_trainer import DPOTrainer
        from trl.trainer.utils import selective_log_softmax
    return types.SimpleNamespace(
        version=trl.__version__,
        DPOTrainer=DPOTrainer,
        CPOTrainer=CPOTrainer,
        selective_log_softmax=selective_log_softmax,
    )


class _FakeFusedLM:
    """Stands in for a model patched by TRL's ``add_fused_lm_head``: returns per-token log-probs
    of ``labels[:, 1:]`` (0 where the label is -100) computed with TRL's own selective_log_softmax
    from fixed logits."""

    training = True

    def __init__(self, logits: torch.Tensor, selective_log_softmax):
        self.logits, self.sls = logits, selective_log_softmax

    def __call__(self, *, labels, fused_lm_head, **_):
        assert fused_lm_head
        shift = labels[:, 1:]
        keep = shift != -100
        lp = self.sls(self.logits[:, :-1], shift.clamp(min=0)).masked_fill(~keep, 0.0)
        zeros = torch.zeros_like(lp)
        return types.SimpleNamespace(
            log_probs=lp,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=torch.zeros_like(keep),
            aux_loss=None,
        )


def _trl_dpo(trl, batch, loss_types, beta, loss_weights=None):
    """TRL's ``DPOTrainer._compute_loss`` on a minimal stand-in ``self`` (precomputed ref logps,
    reverse KL, no weighting): returns (mean loss, TRL's logged metrics)."""
    model = _FakeFusedLM(batch["logits"], trl.selective_log_softmax)
    accelerator = types.SimpleNamespace(
        device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x
    )
    stub = types.SimpleNamespace(
        model=model,
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=loss_types,
        loss_weights=loss_weights or [1.0] * len(loss_types),
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        k: batch[k]
        for k in ("input_ids", "completion_mask", "ref_chosen_logps", "ref_rejected_logps")
    }
    inputs["attention_mask"] = batch["attention_mask"]
    loss = trl.DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in stub._metrics["train"].items()}


def _pair_batch(b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """TRL's DPO layout: rows [chosen_0..chosen_{b-1}, rejected_0..], right padded, prompt first."""
    g = torch.Generator().manual_seed(seed)
    T, V = 12, 13
    input_ids = torch.randint(0, V, (2 * b, T), generator=g)
    completion_mask = torch.zeros(2 * b, T, dtype=torch.long)
    attention_mask = torch.zeros(2 * b, T, dtype=torch.long)
    for i in range(2 * b):
        prompt = int(torch.randint(1, 4, (1,), generator=g))
        n = int(torch.randint(1, T - prompt + 1, (1,), generator=g))
        completion_mask[i, prompt : prompt + n] = 1
        attention_mask[i, : prompt + n] = 1
    return {
        "logits": (3.0 * torch.randn(2 * b, T, V, generator=g, dtype=F64)).requires_grad_(True),
        "input_ids": input_ids,
        "completion_mask": completion_mask,
        "attention_mask": attention_mask,
        "ref_chosen_logps": -20.0 * torch.rand(b, generator=g, dtype=F64),
        "ref_rejected_logps": -20.0 * torch.rand(b, generator=g, dtype=F64),
    }


def _ours_logps(batch) -> PairBatchLogps:
    # Shift for a causal LM: position t scores token t + 1 (see losses/sequence.py).
    mask = batch["completion_mask"][:, 1:]
    logps = sequence_logprobs(batch["logits"][:, :-1], batch["input_ids"][:, 1:], mask)
    lens = mask.sum(-1)
    pc, pr = logps.chunk(2)
    lc, lr = lens.chunk(2)
    return PairBatchLogps(pc, pr, batch["ref_chosen_logps"], batch["ref_rejected_logps"], lc, lr)


def _subset(batch, i: int) -> dict[str, torch.Tensor]:
    """Pair ``i`` alone, in the same layout (rows chosen_i, rejected_i)."""
    b = batch["ref_chosen_logps"].shape[0]
    out = {k: v[[i, b + i]] for k, v in batch.items() if v.shape[0] == 2 * b}
    out["ref_chosen_logps"] = batch["ref_chosen_logps"][i : i + 1]
    out["ref_rejected_logps"] = batch["ref_rejected_logps"][i : i + 1]
    return out


@pytest.mark.parametrize(
    ("trl_type", "name", "beta"),
    [("sigmoid", "dpo", 0.1), ("sigmoid", "dpo", 0.7), ("hinge", "slic", 0.1)],
)
def test_dpo_and_slic_match_trl_dpo_trainer(trl, trl_type, name, beta):
    batch = _pair_batch()
    trl_loss, trl_m = _trl_dpo(trl, batch, [trl_type], beta)
    (trl_grad,) = torch.autograd.grad(trl_loss, batch["logits"])
    losses, m = compute_daa_loss(name, _ours_logps(batch), beta=beta)
    (grad,) = torch.autograd.grad(losses.mean(), batch["logits"])
    torch.testing.assert_close(losses.mean(), trl_loss, **TOL)
    torch.testing.assert_close(grad, trl_grad, **TOL)
    for ours_key, trl_key in [
        ("daa/chosen_reward", "rewards/chosen"),
        ("daa/rejected_reward", "rewards/rejected"),
        ("daa/margin", "rewards/margins"),
        ("daa/accuracy", "rewards/accuracies"),
    ]:
        assert m[ours_key] == pytest.approx(trl_m[trl_key], abs=1e-12)
    for i in range(2):  # per-pair values: TRL only returns the batch mean, so use batches of one
        one, _ = _trl_dpo(trl, _subset(batch, i), [trl_type], beta)
        torch.testing.assert_close(losses[i], one, **TOL)


def test_ipo_matches_trl_with_per_token_average(trl):
    # TRL 1.x divides each log-ratio by the response length before the IPO square; ipo_loss uses
    # the sums (docs/methods.md §5). Feeding per-token averages reproduces TRL exactly.
    batch, beta = _pair_batch(seed=1), 0.1
    trl_loss, _ = _trl_dpo(trl, batch, ["ipo"], beta)
    p = _ours_logps(batch)
    lc, lr = p.chosen_len.to(F64), p.rejected_len.to(F64)
    avg, _ = ipo_loss(
        p.policy_chosen / lc,
        p.policy_rejected / lr,
        p.ref_chosen / lc,
        p.ref_rejected / lr,
        beta=beta,
    )
    torch.testing.assert_close(avg.mean(), trl_loss, **TOL)
    summed, _ = ipo_loss(
        p.policy_chosen, p.policy_rejected, p.ref_chosen, p.ref_rejected, beta=beta
    )
    assert not torch.allclose(summed.mean(), trl_loss)  # the documented difference is real


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_rpo_matches_trl_sigmoid_plus_sft(trl, eta):
    # TRL's RPO: loss_type ["sigmoid", "sft"], weights [1, eta]. Its SFT term is a token mean over
    # the whole batch, equal to NLL(y_w) / |y_w| for a batch of one pair.
    batch = _pair_batch(seed=2)
    losses, _ = compute_daa_loss("rpo", _ours_logps(batch), beta=0.1, eta=eta)
    for i in range(batch["ref_chosen_logps"].shape[0]):
        one, _ = _trl_dpo(trl, _subset(batch, i), ["sigmoid", "sft"], 0.1, [1.0, eta])
        torch.testing.assert_close(losses[i], one, **TOL)


def _trl_cpo_losses(trl, chosen, rejected, *, loss_type, beta, label_smoothing=0.0, gamma=0.5):
    """``CPOTrainer.cpo_loss`` (per-example losses) on a stand-in ``self``."""
    stub = types.SimpleNamespace(
        alpha=0.0,
        accelerator=types.SimpleNamespace(device="cpu"),
        loss_type=loss_type,
        beta=beta,
        label_smoothing=label_smoothing,
        simpo_gamma=gamma,
    )
    return trl.CPOTrainer.cpo_loss(stub, chosen, rejected)[0]


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_cdpo_matches_trl_cpo_label_smoothed_sigmoid(trl, eps, random_pairs):
    # TRL 1.x's DPOTrainer sigmoid loss has no label smoothing (its label_smoothing feeds the
    # "robust" and "exo_pair" losses, which are different). CPOTrainer.cpo_loss keeps the cDPO
    # form -(1-eps) log sigma(beta z) - eps log sigma(-beta z) of z = chosen - rejected; given the
    # policy-minus-reference log-ratios, z = h and it is exactly cDPO.
    p = random_pairs(b=8, seed=4)
    ours, _ = dpo_loss(
        p.policy_chosen,
        p.policy_rejected,
        p.ref_chosen,
        p.ref_rejected,
        beta=0.25,
        label_smoothing=eps,
    )
    theirs = _trl_cpo_losses(
        trl,
        p.policy_chosen - p.ref_chosen,
        p.policy_rejected - p.ref_rejected,
        loss_type="sigmoid",
        beta=0.25,
        label_smoothing=eps,
    )
    torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize(("beta", "gamma"), [(2.0, 1.0), (2.5, 0.3), (0.5, 0.0)])
def test_simpo_matches_trl_cpo_simpo(trl, beta, gamma, random_pairs):
    # CPOTrainer computes SimPO on per-token average log-probs (average_log_prob=True).
    p = random_pairs(b=8, seed=5)
    ours, _ = simpo_loss(
        p.policy_chosen, p.policy_rejected, p.chosen_len, p.rejected_len, beta=beta, gamma=gamma
    )
    theirs = _trl_cpo_losses(
        trl,
        p.policy_chosen / p.chosen_len,
        p.policy_rejected / p.rejected_len,
        loss_type="simpo",
        beta=beta,
        gamma=gamma,
    )
    torch.testing.assert_close(ours, theirs, rtol=0.0, atol=1e-12)


def test_sequence_logprobs_matches_trl(trl):
    batch = _pair_batch(seed=6)
    logits, ids, cm = batch["logits"].detach(), batch["input_ids"], batch["completion_mask"]
    labels = ids.masked_fill(cm == 0, -100)  # TRL's convention: unshifted labels, -100 = ignore
    theirs = trl.CPOTrainer.get_batch_logps(logits, labels)  # shifts internally
    ours = sequence_logprobs(logits[:, :-1], ids[:, 1:], cm[:, 1:])
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(
        token_logprobs(logits, ids), trl.selective_log_softmax(logits, ids), **TOL
    )
