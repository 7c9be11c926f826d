"""The mitigation study: config errors that name the field, and a tiny study with every kind of
arm end to end, whose tables are recomputed from the saved histories and pools (the numbers
behind them are tested by hand in test_mitigation_numbers.py)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from proxygap.cli import run_and_report
from proxygap.config import ConfigError, parse_config

T2 = math.sqrt(2) * 0.95 / math.sqrt(1 - 0.95**2)  # t_{0.975, 2}, see test_mitigation_numbers

SMALL_RM = {"n_embd": 32, "n_head": 2, "n_layer": 1, "epochs": 1}
ARMS = ["single", "uwo", "par", "elastic", "quark", "sft", "salsa", "composite", "constrained"]
TINY = {
    "name": "tinymit",
    "seed": 3,
    "preferences": {"n_pairs": 400, "n_heldout": 100},
    "proxies": [
        {"name": "ens", **SMALL_RM, "ensemble": 3, "label_noise": 0.25},
        {"name": "sent", **SMALL_RM, "target": "sentiment"},
        {"name": "conc", **SMALL_RM, "target": "concision"},
    ],
    "bon": {"n_prompts": 6, "pool_size": 32, "n_points": 8, "examples_at": [1, 32]},
    "mitigations": {
        "proxy": "ens",
        "seeds": [0, 1, 2],
        "bon": {"n_prompts": 6, "pool_size": 32, "n_points": 8},
        "reference_samples": 2,
        "rl": [
            {"name": "single"},
            {"name": "uwo", "aggregation": "uwo", "kl_coef": 0.01},
            {"name": "par", "transforms": [{"method": "par", "params": {"m": 1}}]},
            {
                "name": "elastic",
                "post_step": {"method": "elastic_reset", "params": {"every": 2, "eta": 0.5}},
            },
            {"name": "quark", "quark": {"k": 3}},
            {"name": "sft", "reference": "sft", "kl_coef": 0.01},
            {"name": "salsa", "reference": "soup", "kl_coef": 0.01},
            {"name": "composite", "components": ["sent", "conc"]},
            {
                "name": "constrained",
                "components": ["sent", "conc"],
                "constraint": {"points_from": "composite"},
                "kl_coef": 0.01,
            },
        ],
        "settings": {
            "steps": 4,
            "prompts_per_step": 4,
            "group_size": 2,
            "eval_every": 2,
            "eval_prompts": 4,
            "eval_samples_per_prompt": 2,
            "lr": 1e-3,
        },
    },
    "sft": {"n_texts": 100, "batch_size": 16, "lr": 3e-3, "epochs": 2},
    "runtime": {"threads": 1, "workers": 2},
}


# ---------------------------------------------------------------- config validation
def _bad(update: dict) -> str:
    data = copy.deepcopy(TINY)
    data["mitigations"].update(update)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return str(err.value)


def test_config_errors_name_the_field() -> None:
    assert "mitigations.proxy 'nope'" in _bad({"proxy": "nope"})
    assert "mitigations.seeds" in _bad({"seeds": [0, 1]})
    assert "mitigations.member" in _bad({"member": 3})
    msg = _bad({"rl": [{"name": "x", "transforms": [{"method": "quark"}]}]})
    assert "mitigations.rl.0" in msg and "transforms.0.method" in msg and "'lsc'" in msg
    msg = _bad({"rl": [{"name": "x", "transforms": [{"method": "lsc", "params": {"z": 1}}]}]})
    assert "transforms.0.params" in msg and "['z']" in msg
    msg = _bad({"rl": [{"name": "x", "post_step": {"method": "elastic_reset"}}]})
    assert "post_step.params" in msg and "every" in msg
    assert "mitigations.rl.0.aggregation" in _bad({"rl": [{"name": "x", "aggregation": "max"}]})
    data = copy.deepcopy(TINY)
    data["proxies"][0]["ensemble"] = 1
    with pytest.raises(ConfigError, match="needs ensemble >= 2"):
        parse_config(data)


def _arm_error(arm: dict, **study: object) -> str:
    return _bad({"rl": [{"name": "composite", "components": ["sent", "conc"]}, arm], **study})


def test_new_arm_errors_name_the_problem() -> None:
    cons = {"name": "c", "components": ["sent", "conc"], "constraint": {"points_from": "x"}}
    msg = _arm_error(cons)
    assert "points_from 'x' must name an earlier arm" in msg and "['composite']" in msg
    msg = _arm_error({**cons, "components": ["sent"], "constraint": {"points_from": "composite"}})
    assert "same components ['sent']" in msg
    assert "constraint needs components" in _arm_error(
        {"name": "c", "constraint": {"points_from": "composite"}}
    )
    assert "are not proxies" in _arm_error({"name": "c", "components": ["sent", "nope"]})
    assert "leave aggregation at 'single'" in _arm_error(
        {"name": "c", "components": ["sent"], "aggregation": "mean"}
    )
    msg = _arm_error({"name": "q", "quark": {}, "kl_coef": 0.1, "reference": "soup"})
    assert "quark.kl_coef" in msg and "['kl_coef', 'reference']" in msg
    assert "mitigations.rl.1.quark.k" in _arm_error({"name": "q", "quark": {"k": 1}})
    data = copy.deepcopy(TINY)
    data["sft"] = None
    with pytest.raises(ConfigError, match="arm 'sft', mitigations.rl arm 'salsa' start from SFT"):
        parse_config(data)
    assert "mitigations.rl.1.reference" in _arm_error({"name": "s", "reference": "nope"})


def test_configs_that_would_fail_late_are_refused() -> None:
    cons = {"name": "c", "components": ["sent", "conc"], "constraint": {"points_from": "composite"}}
    msg = _arm_error({**cons, "transforms": [{"method": "par"}]})
    assert "a constraint replaces the reward transforms" in msg
    msg = _arm_error({**cons, "constraint": {"points_from": "composite", "mode": "upper"}})
    assert "mitigations.rl.1.constraint" in msg and "set objective: sum" in msg
    msg = _arm_error({"name": "p", "reference": "soup", "transforms": [{"method": "par"}]})
    assert "['par'] compare with base-policy samples" in msg
    assert "distinct and >= 0" in _bad({"seeds": [-1, 0, 1]})
    settings = {**TINY["mitigations"]["settings"], "kl_controller": "adaptive", "kl_coef": 0.1}
    msg = _bad({"settings": settings})
    assert "needs kl_coef > 0 in every arm" in msg and "'single'" in msg
    for runtime in ({"threads": 2, "workers": 2}, {"threads": 1, "workers": 2, "device": "cuda"}):
        data = copy.deepcopy(TINY)
        data["runtime"] = runtime
        with pytest.raises(ConfigError, match="runtime: workers: 2 needs threads: 1 and device"):
            parse_config(data)


def test_component_targets_are_checked() -> None:
    data = copy.deepcopy(TINY)
    data["proxies"][1]["target"] = "humour"
    with pytest.raises(ConfigError, match=r"unknown target 'humour'.*'concision'.*'sentiment'"):
        parse_config(data)
    data = copy.deepcopy(TINY)
    data["task"] = {"gold": "/some/gold/model"}
    with pytest.raises(ConfigError, match="a gold model \\(task.gold\\) does not have"):
        parse_config(data)


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every kind of arm, on two worker processes."""
    root = tmp_path_factory.mktemp("runs")
    return run_and_report(parse_config(TINY), root, log=lambda *_: None)


def _history(run: Path, arm: str, seed: int) -> list[dict]:
    return json.loads((run / "mitigations" / arm / f"seed-{seed}" / "history.json").read_text())


def test_outputs_exist(tiny_run: Path) -> None:
    for arm in ARMS:
        for seed in (0, 1, 2):
            h = _history(tiny_run, arm, seed)
            assert [r["step"] for r in h] == [0, 2, 4], arm
            assert all(r["ensemble/std"] > 0 for r in h)
    for seed in (0, 1, 2):
        assert (tiny_run / "mitigations" / "bon" / f"seed-{seed}.npz").is_file()
    for name in ("mitigation_bon.png", "mitigation_rl.png", "mitigation_std.png"):
        assert (tiny_run / "plots" / name).is_file()
    md = (tiny_run / "report.md").read_text()
    assert "## Mitigations compared" in md and "## Published claims, checked here" in md
    # eight claims: seven with their arms in this config, the variance one without a mean arm
    assert md.count("Verdict: **") == 7 and md.count("Not tested") == 1
    stages = json.loads((tiny_run / "stages.json").read_text())
    assert "mitigation:constrained:2" in stages and "sft" in stages


def test_every_seed_draws_its_own_ensemble(tiny_run: Path) -> None:
    """Each seed's members were trained with the seeds of its stream (distinct across seeds
    and members), so their weights differ; the pools were scored by that seed's members."""
    from proxygap.models.loading import load_reward_model
    from proxygap.study.mitigation_ensembles import member_seeds

    stages = json.loads((tiny_run / "stages.json").read_text())
    drawn = [stages[f"proxy:ens:seed-{s}"]["member_seeds"] for s in (0, 1, 2)]
    assert drawn == [member_seeds(TINY["seed"], s, 3) for s in (0, 1, 2)]
    assert len({x for seeds in drawn for x in seeds}) == 9
    first = [
        next(load_reward_model(tiny_run / "proxies" / "ens" / f"seed-{s}" / "member-0")
             .parameters()).detach().numpy()
        for s in (0, 1)
    ]  # fmt: skip
    assert not np.allclose(first[0], first[1])
    summary = json.loads((tiny_run / "mitigations" / "summary.json").read_text())
    diag = summary["bon_diagnostics"]
    assert [d["seed"] for d in diag] == [0, 1, 2]
    for d in diag:
        assert -1.0 <= d["error_corr"] <= 1.0 and len(d["ceilings"]) == 3
        assert sum(d["wco_argmin"]) == pytest.approx(1.0)


def test_arm_starts_and_quark_conditioning(tiny_run: Path) -> None:
    """SFT and soup arms start away from the base policy (d > 0 at step 0: the evaluator's
    initial policy is the base); the others start on it. The soup's weights are the average
    of the two variants'."""
    for arm in ARMS:
        d0 = _history(tiny_run, arm, 0)[0]["d"]
        if arm in ("sft", "salsa"):
            assert d0 > 0.05, (arm, d0)
        elif arm == "quark":  # conditioned on a new, untrained control token: near pi0
            assert d0 < 0.5, d0
        else:  # the samplers' and the evaluator's log-probs agree to float precision
            assert d0 < 1e-3, (arm, d0)
    from proxygap.models.loading import load_policy

    a, b, soup = (load_policy(tiny_run / "sft" / n) for n in ("a", "b", "soup"))
    for (name, pa), pb, ps in zip(
        a.named_parameters(), b.parameters(), soup.parameters(), strict=True
    ):
        np.testing.assert_allclose(
            ps.detach().numpy(), (pa.detach().numpy() + pb.detach().numpy()) / 2, atol=1e-6,
            err_msg=name,
        )  # fmt: skip
    assert any(r.get("quark/pool_size", 0) > 0 for r in _history(tiny_run, "quark", 0))


def test_constrained_arm_uses_the_composite_peaks(tiny_run: Path) -> None:
    """The proxy points are the components at each composite seed's gold peak, averaged; the
    constrained arm logs its multipliers and violations against exactly those points."""
    summary = json.loads((tiny_run / "mitigations" / "summary.json").read_text())
    points = summary["proxy_points"]["constrained"]
    peaks = []
    for seed in (0, 1, 2):
        h = _history(tiny_run, "composite", seed)
        best = max(range(len(h)), key=lambda i: (h[i]["reward/gold"], -i))
        peaks.append([h[best]["component/sent"], h[best]["component/conc"]])
    np.testing.assert_allclose([points["sent"], points["conc"]], np.mean(peaks, axis=0))
    # equality multipliers step against their violation: raw <- raw - lr * (mean - point), and
    # tanh is increasing, so every step's change of lambda has the opposite sign of its violation
    for seed in (0, 1, 2):
        lines = tiny_run / "mitigations" / "constrained" / f"seed-{seed}" / "steps.jsonl"
        steps = [json.loads(x) for x in lines.read_text().splitlines()]
        assert len(steps) == 4
        for i in (0, 1):
            lam = [0.0] + [r[f"constraint/lambda_{i}"] for r in steps]  # lambda starts at 0
            for t, r in enumerate(steps):
                assert (lam[t + 1] - lam[t]) * r[f"constraint/violation_{i}"] <= 0, (seed, i, t)
                assert lam[t + 1] != lam[t]


def test_summary_equals_recomputation_from_histories(tiny_run: Path) -> None:
    summary = json.loads((tiny_run / "mitigations" / "summary.json").read_text())
    for arm in ARMS:
        peaks, ends, gaps, growth = [], [], [], []
        for seed in (0, 1, 2):
            h = _history(tiny_run, arm, seed)
            best = 0
            for i, r in enumerate(h):  # naive loop: the first maximum of gold
                if r["reward/gold"] > h[best]["reward/gold"]:
                    best = i
            peaks.append(h[best]["reward/gold"])
            ends.append(h[-1]["reward/gold"])
            gaps.append(h[-1]["reward/proxy"] - h[-1]["reward/gold"])
            growth.append(h[-1]["ensemble/std"] / h[0]["ensemble/std"])
        for key, xs in (("gold_peak", peaks), ("gold_end", ends), ("gap_end", gaps),
                        ("std_growth", growth)):  # fmt: skip
            got = summary["rl"][arm][key]
            m = sum(xs) / 3
            s = math.sqrt(sum((x - m) ** 2 for x in xs) / 2)
            assert got["mean"] == pytest.approx(m, abs=1e-12), (arm, key)
            assert got["hi"] == pytest.approx(m + T2 * s / math.sqrt(3), abs=1e-9), (arm, key)


def test_bon_seed_summary_recomputed_from_pools(tiny_run: Path) -> None:
    """The best-of-n table is the t-interval over seeds of each pool's quantities; the mean
    variant's end gold recomputed with an exact per-n loop from the saved pool."""
    summary = json.loads((tiny_run / "mitigations" / "summary.json").read_text())
    members = {f"member-{k}" for k in range(3)}
    assert set(summary["bon"]) == {"single", "mean", "wco", "uwo"} | members
    # the average single member: per seed, every quantity is the mean of the members' own
    for seed in (0, 1, 2):
        for q, value in summary["bon_runs"]["single"][seed].items():
            each = [summary["bon_runs"][k][seed][q] for k in sorted(members)]
            assert value == pytest.approx(sum(each) / 3, abs=1e-12), (seed, q)
    held = [json.loads(line) for line in (tiny_run / "preferences.jsonl").read_text().splitlines()]
    ref_gold = np.array([r[k] for r in held[400:500] for k in ("gold_chosen", "gold_rejected")])
    scale = ref_gold.std()
    ends = []
    for seed in (0, 1, 2):
        with np.load(tiny_run / "mitigations" / "bon" / f"seed-{seed}.npz") as z:
            gold, members = z["gold"] / scale, z["members"]
        select = members.mean(axis=-1)  # (P, N)
        P, N = select.shape
        # n = N: the pick is the argmax of the whole pool (ties: average of the tied golds)
        top = [gold[p][select[p] == select[p].max()].mean() for p in range(P)]
        ends.append(float(np.mean(top) - gold.mean()))
        assert summary["bon_runs"]["mean"][seed]["gold_end"] == pytest.approx(ends[-1], abs=1e-9)
    q = summary["bon"]["mean"]["gold_end"]
    assert q["mean"] == pytest.approx(np.mean(ends), abs=1e-9) and q["n"] == 3


def test_workers_do_not_change_results(tiny_run: Path, tmp_path: Path) -> None:
    """One process gives the same histories as two (timings aside): each run seeds itself."""
    data = copy.deepcopy(TINY)
    keep = ("single", "composite", "constrained")
    data["mitigations"]["rl"] = [a for a in data["mitigations"]["rl"] if a["name"] in keep]
    data["mitigations"]["bon"] = None
    data["runtime"]["workers"] = 1
    run = run_and_report(parse_config(data), tmp_path, log=lambda *_: None)
    for arm in ("single", "composite", "constrained"):
        for seed in (0, 1, 2):
            a, b = _history(run, arm, seed), _history(tiny_run, arm, seed)
            strip = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in a]
            assert strip == [{k: v for k, v in r.items() if not k.startswith("time/")} for r in b]


def test_a_failed_worker_run_keeps_the_finished_ones(tmp_path: Path, monkeypatch) -> None:
    """One run fails in a worker process: its error reaches the caller with the run named, the
    runs that finished are marked done, and the next invocation trains only what is missing."""
    import proxygap.study.mitigations as study_module

    data = copy.deepcopy(TINY)
    data["mitigations"]["rl"] = data["mitigations"]["rl"][:2]  # single, uwo
    data["mitigations"]["bon"] = None
    cfg = parse_config(data)
    real = study_module.run_arm

    def failing(ctx, arm, seed, *, points=None):
        if arm.name == "uwo" and seed == 1:
            raise FloatingPointError("reward is nan")
        return real(ctx, arm, seed, points=points)

    monkeypatch.setattr(study_module, "run_arm", failing)
    with pytest.raises(RuntimeError, match=r"mitigation uwo, seed 1 failed: reward is nan"):
        run_and_report(cfg, tmp_path, log=lambda *_: None)
    run = tmp_path / "tinymit"
    done = set(json.loads((run / "stages.json").read_text()))
    assert {f"mitigation:single:{s}" for s in (0, 1, 2)} <= done
    assert "mitigation:uwo:1" not in done
    stamps = {s: (run / "mitigations" / "single" / f"seed-{s}" / "history.json").stat().st_mtime_ns
              for s in (0, 1, 2)}  # fmt: skip
    monkeypatch.setattr(study_module, "run_arm", real)
    lines: list[str] = []
    run_and_report(cfg, tmp_path, log=lambda *a: lines.append(" ".join(a)))
    # the rerun trains exactly the runs the failed invocation did not finish (uwo seed 1, and any
    # run it never started after the failure), and nothing that was done
    missing = {
        f"mitigation {a}, seed {s}"
        for a in ("single", "uwo")
        for s in (0, 1, 2)
        if f"mitigation:{a}:{s}" not in done
    }
    assert "mitigation uwo, seed 1" in missing
    trained = {x.removesuffix(": done") for x in lines if x.startswith("mitigation")}
    assert trained == missing
    for s, t in stamps.items():
        path = run / "mitigations" / "single" / f"seed-{s}" / "history.json"
        assert path.stat().st_mtime_ns == t


def test_resume_reads_back_every_run(tiny_run: Path) -> None:
    """A second invocation finds every ``mitigation:<arm>:<seed>`` stage done and trains
    nothing: the histories on disk are unchanged byte for byte."""
    files = sorted((tiny_run / "mitigations").glob("*/seed-*/history.json"))
    assert len(files) == 3 * len(ARMS)
    before = [f.read_bytes() for f in files]
    lines: list[str] = []
    run_and_report(parse_config(TINY), tiny_run.parent, log=lambda *a: lines.append(" ".join(a)))
    assert not any(line.startswith("mitigation ") for line in lines)
    assert [f.read_bytes() for f in files] == before


class _Stop(Exception):
    """Stands for a kill: raised by a step hook of a run."""


def test_killed_arms_resume_from_their_checkpoints(
    tiny_run: Path, tmp_path: Path, monkeypatch
) -> None:
    """The Elastic Reset and Quark runs of seed 0 are taken out of a finished study and run
    again, stopped once step 3 is recorded (after the checkpoint before the evaluation at step
    2): the next invocation continues each from its checkpoint, takes only steps 3 and 4, and
    ends with the files of the uninterrupted study, timings aside."""
    import shutil

    import proxygap.study.mitigation_arms as arms_module

    run = tmp_path / "tinymit"
    shutil.copytree(tiny_run, run)
    redo = ("elastic", "quark")
    stages = json.loads((run / "stages.json").read_text())
    for arm in redo:
        del stages[f"mitigation:{arm}:0"]
        shutil.rmtree(run / "mitigations" / arm / "seed-0")
    (run / "stages.json").write_text(json.dumps(stages))
    taken, real = tmp_path / "taken.txt", arms_module.watchers

    def stopping(*args, stop: bool, **kw):
        watch = real(*args, **kw)

        def on_step(row: dict) -> None:  # the runs are in forked workers: record in a file
            with taken.open("a") as fh:
                fh.write(f"{kw['run']} {row['step']:g}\n")
            if stop and row["step"] == 3:
                raise _Stop

        watch.on_step.append(on_step)
        return watch

    cfg = parse_config(TINY)
    monkeypatch.setattr(arms_module, "watchers", lambda *a, **kw: stopping(*a, stop=True, **kw))
    with pytest.raises(RuntimeError, match="failed"):
        run_and_report(cfg, tmp_path, log=lambda *_: None)
    for arm in redo:
        assert (run / "mitigations" / arm / "seed-0" / "checkpoints" / "step-000002").is_dir()
    taken.write_text("")
    monkeypatch.setattr(arms_module, "watchers", lambda *a, **kw: stopping(*a, stop=False, **kw))
    run_and_report(cfg, tmp_path, log=lambda *_: None)
    assert sorted(taken.read_text().splitlines()) == sorted(
        f"mitigations/{arm}/seed-0 {s}" for arm in redo for s in (3, 4)
    )

    def strip(path: Path) -> list[dict]:
        text = path.read_text()
        rows = (
            [json.loads(x) for x in text.splitlines()]
            if path.suffix == ".jsonl"
            else json.loads(text)
        )
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    for arm in redo:
        folder, ref = (
            run / "mitigations" / arm / "seed-0",
            tiny_run / "mitigations" / arm / "seed-0",
        )
        for name in ("history.json", "steps.jsonl"):
            assert strip(folder / name) == strip(ref / name), (arm, name)
        assert (folder / "examples.json").read_bytes() == (ref / "examples.json").read_bytes()
        assert not (folder / "checkpoints").exists()
