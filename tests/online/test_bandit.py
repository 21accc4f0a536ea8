"""MergeBandit: policies, learning from rewards, arms added and removed live, durable state
(round trip, refusal of foreign states; SIGKILL during updates is in tests/safety/test_crash.py),
reward validation, the replay used by scripts/simulate_bandit.py, and the CLI."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from simmerge.errors import BanditStateError, ConfigError, InputNotFoundError
from simmerge.online.bandit import CONTEXT_FEATURES, ArmContext, MergeBandit, Scaler
from simmerge.online.replay import ReplayData, replay

ARMS = ("linear", "ties[density=0.5]", "ties[density=0.8]", "slerp[t=0.5]")
# The defaults trust the predictor strongly (chosen by replay on the shipped data); tests of the
# learning mechanics use a wider prior so a few dozen rewards can move it.
LEARN = {"noise": 0.1, "ridge": 1.0}
FEATS = dict.fromkeys(CONTEXT_FEATURES, 0.0)


def contexts(priors, arms=ARMS, feats=FEATS):
    return [ArmContext(a, feats, p) for a, p in zip(arms, priors, strict=True)]


def play(bandit: MergeBandit, steps: int, true: dict[str, float], priors: dict[str, float]):
    """Select among ``priors``' arms and reward with ``true`` (deterministic) each step."""
    chosen = []
    for _ in range(steps):
        arms = tuple(priors)
        choice = bandit.select(contexts([priors[a] for a in arms], arms))
        bandit.update(choice, true[choice.arm])
        chosen.append(choice.arm)
    return chosen


def test_without_feedback_greedy_policies_follow_the_predictor():
    priors = [0.5, 0.9, 0.6, 0.7]
    for policy in ("predictor", "egreedy"):
        bandit = MergeBandit(arms=ARMS, policy=policy, epsilon=0.0)
        assert bandit.select(contexts(priors)).arm == "ties[density=0.5]"


@pytest.mark.parametrize("policy", ["lints", "linucb"])
def test_bandit_learns_that_the_predictor_overrates_an_arm(policy):
    # the predictor prefers ties 0.5 by a little; in truth it is much worse than slerp
    priors = {
        "linear": 0.6,
        "ties[density=0.5]": 0.8,
        "ties[density=0.8]": 0.6,
        "slerp[t=0.5]": 0.75,
    }
    true = {"linear": 0.6, "ties[density=0.5]": 0.3, "ties[density=0.8]": 0.55, "slerp[t=0.5]": 0.8}
    bandit = MergeBandit(arms=ARMS, policy=policy, seed=1, **LEARN)
    chosen = play(bandit, 120, true, priors)
    assert chosen[0] in ("ties[density=0.5]", "slerp[t=0.5]")
    assert chosen[-20:].count("slerp[t=0.5]") >= 18
    mean, _ = bandit.estimate("ties[density=0.5]", bandit.scaler.transform(FEATS, 0.8), 0.8)
    assert mean < 0.6  # the correction is learned, not just avoided


def test_predictor_policy_never_learns():
    priors = {"linear": 0.6, "ties[density=0.5]": 0.8}
    true = {"linear": 0.9, "ties[density=0.5]": 0.1}
    bandit = MergeBandit(arms=tuple(priors), policy="predictor")
    assert set(play(bandit, 30, true, priors)) == {"ties[density=0.5]"}


def test_same_seed_same_choices_and_different_seed_differs():
    priors = {a: 0.6 for a in ARMS}
    true = {a: 0.5 + 0.1 * i for i, a in enumerate(ARMS)}
    runs = [
        play(MergeBandit(arms=ARMS, policy="lints", seed=s), 40, true, priors) for s in (3, 3, 4)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_new_arm_inherits_its_family_and_is_explored():
    priors = {"linear": 0.6, "ties[density=0.5]": 0.6, "ties[density=0.8]": 0.6}
    true = {"linear": 0.5, "ties[density=0.5]": 0.9, "ties[density=0.8]": 0.9}
    bandit = MergeBandit(arms=tuple(priors), policy="linucb", **LEARN)
    play(bandit, 60, true, priors)
    x = bandit.scaler.transform(FEATS, 0.6)
    new = bandit.add_arm("ties[density=0.2]")
    assert bandit.pulls(new) == 0
    family_prior, family_sd = bandit.estimate(new, x, 0.6)
    fresh = bandit.add_arm("della[density=0.5,epsilon=0.1]")
    fresh_family, fresh_sd = bandit.estimate(fresh, x, 0.6)
    assert family_prior > 0.75  # what the ties family learned carries over
    assert fresh_family < family_prior  # a new family starts from the global level...
    assert fresh_sd > 2 * family_sd  # ...with a wide prior: the predictor never saw it
    bandit.remove_arm(fresh)
    # a new arm with a better true reward gets picked
    true[new], priors[new] = 0.95, 0.6
    chosen = play(bandit, 40, true, priors)
    assert new in chosen[:10] and chosen[-10:].count(new) >= 8


def test_remove_arm_and_arm_errors():
    bandit = MergeBandit(arms=ARMS)
    bandit.remove_arm("linear")
    assert "linear" not in bandit.active_arms
    with pytest.raises(BanditStateError, match="does not have"):
        bandit.select(contexts([0.5] * 4))
    with pytest.raises(BanditStateError, match="not active"):
        bandit.remove_arm("linear")
    with pytest.raises(BanditStateError, match="already active"):
        bandit.add_arm("slerp[t=0.5]")
    with pytest.raises(ConfigError):
        bandit.add_arm("nonsense_operator")
    with pytest.raises(BanditStateError, match="no candidates"):
        bandit.select([])


@pytest.mark.parametrize("reward", [math.nan, -0.01, 1.01, math.inf, "high", None])
def test_rewards_outside_unit_interval_or_not_numbers_are_rejected(reward):
    bandit = MergeBandit(arms=ARMS)
    choice = bandit.select(contexts([0.5] * 4))
    with pytest.raises(BanditStateError, match="Reward"):
        bandit.update(choice, reward)
    bandit.update(choice, 0.5)  # still pending after a rejected reward
    with pytest.raises(BanditStateError, match="not pending"):
        bandit.update(choice, 0.5)


def test_bad_parameters_are_typed_errors():
    with pytest.raises(ConfigError, match="policy"):
        MergeBandit(policy="ucb2")
    with pytest.raises(ConfigError, match="noise"):
        MergeBandit(noise=0)
    with pytest.raises(ConfigError, match="level_dims"):
        MergeBandit(level_dims={"global": 2})
    with pytest.raises(BanditStateError, match="prior"):
        MergeBandit(arms=ARMS).select(contexts([0.5, math.nan, 0.5, 0.5]))


# --- durable state ---------------------------------------------------------------------------


def test_save_load_round_trip_continues_identically(tmp_path):
    priors = {a: 0.6 for a in ARMS}
    true = {a: 0.4 + 0.1 * i for i, a in enumerate(ARMS)}
    bandit = MergeBandit(arms=ARMS, policy="lints", seed=5)
    play(bandit, 15, true, priors)
    pending = bandit.select(contexts([0.6] * 4), request={"models": ["a", "b"]})
    bandit.save(tmp_path / "state.json")
    loaded = MergeBandit.load(tmp_path / "state.json")
    assert loaded.pending == bandit.pending and loaded.pending[0].request == {"models": ["a", "b"]}
    loaded.update(pending.id, 0.7)
    bandit.update(pending.id, 0.7)
    assert play(loaded, 20, true, priors) == play(bandit, 20, true, priors)
    assert loaded.n_updates == bandit.n_updates == 36


def _tamper(path, change):
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(context_features=["js_mean"]), "other context features"),
        (lambda s: s.update(surprise=1), "unknown keys"),
        (lambda s: s.pop("levels"), "missing keys"),
        (lambda s: s.update(alpha="wide"), "'alpha' should be"),
        (lambda s: s.update(format_version=99), "format 99"),
        (lambda s: s["levels"]["global"].update(a=[[1.0]]), "malformed"),
        (lambda s: s["arms"].update({"bogus[x=1]": "bogus"}), "malformed"),
        (lambda s: s.update(rng={"bit_generator": "nope"}), "random state"),
    ],
)
def test_load_refuses_foreign_or_malformed_states(tmp_path, change, message):
    bandit = MergeBandit(arms=ARMS)
    play(bandit, 3, dict.fromkeys(ARMS, 0.5), dict.fromkeys(ARMS, 0.5))
    path = bandit.save(tmp_path / "state.json")
    _tamper(path, change)
    with pytest.raises(BanditStateError, match=message):
        MergeBandit.load(path)


def test_load_reports_missing_and_non_json_files(tmp_path):
    with pytest.raises(InputNotFoundError, match="No bandit state"):
        MergeBandit.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BanditStateError, match="not JSON"):
        MergeBandit.load(tmp_path / "bad.json")


# --- replay ----------------------------------------------------------------------------------


def test_replay_regret_is_zero_for_the_oracle_arm_and_learning_beats_random():
    rng = np.random.default_rng(0)
    n, arms = 300, ("linear", "ties[density=0.5]", "slerp[t=0.5]")
    rewards = np.clip(rng.normal([0.5, 0.7, 0.6], 0.05, size=(n, 3)), 0, 1)
    rewards[:, 1] = rewards.max(axis=1)  # ties is always (one of) the best
    priors = np.tile([0.6, 0.55, 0.6], (n, 1))  # the predictor underrates it
    data = ReplayData(arms, rewards, priors, tuple(FEATS for _ in range(n)))
    order = rng.permutation(n)
    fixed = replay(data, order, "best_fixed", fixed_arm="ties[density=0.5]")
    assert fixed.cumulative_regret[-1] == 0
    regrets = {
        p: replay(data, order, p, seed=1, **LEARN).cumulative_regret[-1]
        for p in ("lints", "random")
    }
    assert regrets["lints"] < regrets["random"] / 3
    late = replay(data, order, "lints", seed=1, **LEARN)
    assert late.chosen[-50:].count("ties[density=0.5]") >= 45


def test_replay_with_an_arm_arriving_mid_stream_counts_regret_over_available_arms():
    n, arms = 40, ("linear", "slerp[t=0.5]")
    rewards = np.tile([0.5, 0.9], (n, 1))
    data = ReplayData(arms, rewards, np.tile([0.6, 0.6], (n, 1)), tuple(FEATS for _ in range(n)))
    res = replay(data, range(n), "linucb", initial_arms=["linear"], arrivals={20: ["slerp[t=0.5]"]})
    assert res.regret[:20] == [0.0] * 20  # linear was the best available
    assert "slerp[t=0.5]" in res.chosen[20:25]


def test_scaler_standardizes_and_treats_missing_features_as_the_mean():
    rows = [dict(FEATS, js_mean=v) for v in (0.0, 1.0, 2.0)]
    scaler = Scaler.fit(rows, [0.5, 0.7, 0.9])
    x = scaler.transform({"js_mean": 2.0}, 0.7)
    assert x[0] == 1.0 and x[1] == pytest.approx(0.0)
    assert x[2] == pytest.approx((2.0 - 1.0) / np.std([0, 1, 2]))
    assert (x[3:] == 0).all()


# --- CLI on the micro zoo --------------------------------------------------------------------


def test_cli_select_update_verify_and_arms(trained, tmp_path, capsys):
    from simmerge.cli.main import main
    from simmerge.outcomes.store import OutcomeStore

    catalog = trained["catalog_path"]
    predictor = trained["predictor"]
    state = tmp_path / "bandit.json"
    a, b = trained["catalog"].expert_names[:2]
    base = ["--state", str(state)]
    argv = ["bandit", "select", str(catalog), "--models", f"{a},{b}", *base, "--json"]
    assert main([*argv, "--predictor", str(predictor), "--cache-dir", str(tmp_path / "c")]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["request"]["models"] == [a, b] and 0 <= first["prior"] <= 2
    assert main(["bandit", "update", *base, "--choice", str(first["id"]), "--reward", "0.8"]) == 0
    capsys.readouterr()
    assert main(["bandit", "update", *base, "--choice", "0", "--reward", "0.8"]) == 3
    assert "not pending" in capsys.readouterr().err
    assert main([*argv, "--predictor", str(predictor), "--cache-dir", str(tmp_path / "c")]) == 0
    second = json.loads(capsys.readouterr().out)
    store = tmp_path / "outcomes.sqlite"
    upd = ["bandit", "update", *base, "--choice", str(second["id"]), "--verify"]
    assert main([*upd, "--store", str(store)]) == 0
    assert "learned (2 so far)" in capsys.readouterr().out
    with OutcomeStore(store) as db:
        assert {r["candidate"] for r in db.to_records()} == {second["arm"]}
    assert main(["bandit", "add-arm", *base, "ties[density=0.3]"]) == 0
    assert main(["bandit", "remove-arm", *base, "linear"]) == 0
    arms = MergeBandit.load(state).active_arms
    assert "ties[density=0.3]" in arms and "linear" not in arms
    assert main(["bandit", "update", *base, "--choice", "9", "--reward", "2"]) == 3


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["levels"]["global"].pop("n"),
        lambda s: s["levels"]["global"].update(n="x"),
        lambda s: s["levels"]["global"].update(a=[[0.0, 0.0], [0.0, 0.0]]),  # singular
        lambda s: s["levels"]["global"].update(b=[math.nan, 0.0]),
        lambda s: s.update(known_families=[[1]]),
        lambda s: s["scaler"].update(prior_std=0),
        lambda s: s.update(seed=-1),
        lambda s: s.update(policy="ucb2"),
        lambda s: s["arms"].update({"linear": "ties"}),
        lambda s: s["pending"][0].update(id="x"),
        lambda s: s["pending"][0].update(x=["a"] * 9),
        lambda s: s["pending"][0].update(prior="high"),
        lambda s: s.update(next_choice=0),  # would hand out the pending choice's id again
    ],
)
def test_load_refuses_states_whose_values_are_unusable(tmp_path, change):
    bandit = MergeBandit(arms=ARMS)
    play(bandit, 3, dict.fromkeys(ARMS, 0.5), dict.fromkeys(ARMS, 0.5))
    bandit.select(contexts([0.5] * 4))  # leaves one pending choice
    path = bandit.save(tmp_path / "state.json")
    _tamper(path, change)
    with pytest.raises(BanditStateError):
        MergeBandit.load(path)


def test_cli_commands_on_one_state_take_turns(tmp_path):
    import threading

    from simmerge.online.service import state_lock

    path = tmp_path / "state.json"
    order = []

    def second():
        with state_lock(path):
            order.append("b")

    with state_lock(path):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.2)
        order.append("a")  # the second holder waits until the first is done
    t.join(5)
    assert order == ["a", "b"]


def _play_untrusted(bandit: MergeBandit, steps: int, true, priors, prior_sd: float):
    chosen = []
    for _ in range(steps):
        arms = tuple(priors)
        ctx = [ArmContext(a, FEATS, priors[a], prior_sd) for a in arms]
        choice = bandit.select(ctx)
        bandit.update(choice, true[choice.arm])
        chosen.append(choice.arm)
    return chosen


@pytest.mark.parametrize("policy", ["lints", "linucb"])
def test_an_untrusted_prior_makes_the_bandit_try_more_arms_before_it_settles(policy):
    # out of distribution the predictor's favourite (ties 0.5) is in truth the worst arm
    priors = {"linear": 0.6, "ties[density=0.5]": 0.8, "ties[density=0.8]": 0.6,
              "slerp[t=0.5]": 0.7}  # fmt: skip
    true = {"linear": 0.6, "ties[density=0.5]": 0.3, "ties[density=0.8]": 0.55, "slerp[t=0.5]": 0.8}
    trusted = _play_untrusted(MergeBandit(arms=ARMS, policy=policy), 30, true, priors, 0.0)
    wide = _play_untrusted(MergeBandit(arms=ARMS, policy=policy), 30, true, priors, 0.3)
    assert len(set(wide[:12])) > len(set(trusted[:12]))
    assert "slerp[t=0.5]" in wide[:6]  # the better arm is tried within the first requests


def test_the_untrusted_priors_extra_variance_shrinks_with_the_arms_pulls():
    bandit = MergeBandit(arms=ARMS, policy="linucb")
    x = bandit.scaler.transform(FEATS, 0.7)
    _, sd0 = bandit.estimate("linear", x, 0.7)
    _, sd_wide = bandit.estimate("linear", x, 0.7, prior_sd=0.3)
    assert sd_wide > 0.3 > sd0
    for _ in range(8):
        choice = bandit.select([ArmContext("linear", FEATS, 0.7, 0.3)])
        bandit.update(choice, 0.7)
    _, sd_later = bandit.estimate("linear", x, 0.7, prior_sd=0.3)
    assert sd_later < 0.3 / 2


def test_prior_sd_comes_from_the_widened_interval_out_of_distribution_only():
    from statistics import NormalDist

    from simmerge.online.bandit import UNBACKED_PRIOR_SD, prior_sd_of

    assert prior_sd_of((0.2, 1.0), True, 0.9) == 0.0
    assert prior_sd_of((0.2, 1.0), None, 0.9) == 0.0
    z = NormalDist().inv_cdf(0.95)
    assert prior_sd_of((0.2, 1.0), False, 0.9) == pytest.approx(0.4 / z)
    assert prior_sd_of(None, False, None) == UNBACKED_PRIOR_SD
    bandit = MergeBandit(arms=ARMS)
    with pytest.raises(BanditStateError, match="prior_sd"):
        bandit.select([ArmContext("linear", FEATS, 0.7, -1.0)])
