"""Best of n (sampling.candidates > 2): the pair is the likelihood judge's best candidate and the
policy's most frequent other one, and the training judge then keeps it best over the other."""
from __future__ import annotations

import pytest
import torch

from isrt import prompts
from isrt.config import ConfigError, load_config
from isrt.engine.training.logprobs import sequence_logps
from isrt.stages import candidate_scores, generate_responses, judge_pairs, pick_pair

from test_stages import tiny_features


def test_pair_is_the_judges_best_and_the_policys_most_frequent_other():
    # the right "three" is sampled once; "two" is the policy's usual answer, "one paper" junk
    cands = ["two", "two", "one paper", "three", "two", "one"]
    scores = {"two": -3.0, "one paper": -20.0, "three": -0.1, "one": -2.0}
    assert pick_pair(cands, scores) == ["two", "three"]  # in the order first sampled


def test_when_the_judge_agrees_with_the_policy_the_pair_reinforces_it_against_the_runner_up():
    cands = ["one", "two", "two", "three", "one", "two"]
    assert pick_pair(cands, {"one": -2.0, "two": -0.5, "three": -4.0}) == ["one", "two"]


def test_ties_go_to_the_earlier_sampled():
    cands = ["a", "b", "c", "b", "c"]
    # the best is a tie of "b" and "c": "b", sampled first; the most frequent other: "c" (2 against 1)
    assert pick_pair(cands, {"a": -1.0, "b": -0.5, "c": -0.5}) == ["b", "c"]
    # frequency tie between "b" and "c" for the other: the earlier sampled, "b"
    assert pick_pair(cands, {"a": -0.1, "b": -3.0, "c": -2.0}) == ["a", "b"]


def test_all_candidates_alike_give_an_identical_pair_and_two_distinct_give_both():
    assert pick_pair(["x", "x", "x"], {"x": -1.0}) == ["x", "x"]
    assert pick_pair(["y", "x", "x", "x"], {"x": -1.0, "y": -9.0}) == ["y", "x"]


def test_more_than_two_candidates_need_the_likelihood_judge():
    with pytest.raises(ConfigError, match="sampling.candidates.*likelihood"):
        load_config("smoke", ["sampling.candidates=4", "judge.mode=score"])
    with pytest.raises(ConfigError, match="sampling.candidates"):
        load_config("smoke", ["sampling.candidates=1"])
    assert load_config("smoke", ["sampling.candidates=4", "judge.mode=likelihood"]).sampling.candidates == 4


@pytest.fixture(scope="module")
def setup():
    adapter, cache = tiny_features(2)
    records = [
        {"id": "a", "video_path": "v0", "prompt": "What color is the circle?", "context": "A red circle moving left.",
         "previous_context": None},
        {"id": "b", "video_path": "v1", "prompt": "How many objects are there?", "context": "Three objects.",
         "previous_context": "Two objects."},
    ]
    return adapter, cache, records


@pytest.mark.parametrize("kind", ["current", "previous", "none"])
def test_candidate_scores_are_the_likelihood_judges_scores_with_its_context(setup, kind):
    adapter, cache, records = setup
    cfg = load_config("smoke", ["judge.mode=likelihood", "sampling.candidates=4", f"judge.context={kind}",
                                "sampling.batch_size=3"])
    samples = {"a": ["red", "blue", "red", "green"], "b": ["two", "two", "three", "2"]}
    got = candidate_scores(adapter, cache, records, samples, cfg)
    for rec in records:
        evidence = {"current": rec["context"], "previous": rec["previous_context"], "none": None}[kind]
        chat = adapter.chat_prompt(prompts.judge_answer_prompt(rec["prompt"], evidence))
        distinct = list(dict.fromkeys(samples[rec["id"]]))
        assert list(got[rec["id"]]) == distinct
        with torch.no_grad():
            want = sequence_logps(adapter, [chat] * len(distinct), distinct,
                                  [cache.get(adapter, rec["video_path"])] * len(distinct)).tolist()
        assert [got[rec["id"]][y] for y in distinct] == pytest.approx(want, abs=1e-5)


def test_the_training_judge_keeps_the_picked_best_over_the_other(setup):
    adapter, cache, records = setup
    cfg = load_config("smoke", ["judge.mode=likelihood", "judge.temperature=0", "sampling.candidates=4"])
    samples = {"a": ["red", "blue", "blue", "green"], "b": ["two", "two", "three", "four"]}
    scores = candidate_scores(adapter, cache, records, samples, cfg)
    judged = [dict(r, responses=pick_pair(samples[r["id"]], scores[r["id"]])) for r in records]
    for rec, j in zip(judged, judge_pairs(adapter, cache, judged, cfg, seed_key=(0, 0), show=False)):
        best = max(scores[rec["id"]], key=scores[rec["id"]].get)
        assert best in rec["responses"]
        assert j["kept"] and rec["responses"][int(j["pick"] == "y2")] == best


def test_stage1_samples_n_candidates_per_prompt_deterministically(setup):
    adapter, cache, records = setup
    cfg = load_config("smoke", ["judge.mode=likelihood", "sampling.candidates=5", "sampling.max_new_tokens=3"])
    first = generate_responses(adapter, cache, records, cfg, seed_key=(0, 0), show=False)
    assert [len(first[r["id"]]) for r in records] == [5, 5]
    assert generate_responses(adapter, cache, records, cfg, seed_key=(0, 0), show=False) == first


def test_candidate_scores_with_contrast_subtract_the_no_context_score(setup):
    adapter, cache, records = setup
    base = ["judge.mode=likelihood", "sampling.candidates=3"]
    samples = {"a": ["red", "blue", "red"], "b": ["two", "three", "2"]}
    plain = candidate_scores(adapter, cache, records, samples, load_config("smoke", base))
    none = candidate_scores(adapter, cache, records, samples, load_config("smoke", base + ["judge.context=none"]))
    pmi = candidate_scores(adapter, cache, records, samples, load_config("smoke", base + ["judge.contrast=true"]))
    for rid in samples:
        for y in plain[rid]:
            assert pmi[rid][y] == pytest.approx(plain[rid][y] - none[rid][y], abs=1e-5)
