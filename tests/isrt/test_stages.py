"""Stage 2's likelihood judge: each response scored by log pi_t(y | video, c_t, question)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from isrt import prompts
from isrt.config import load_config
from isrt.engine.adapters import load_adapter
from isrt.engine.training.logprobs import sequence_logps
from isrt.stages import judge_pairs, other_videos

F = 4


class _Features:
    """Stands in for FeatureCache: features per video path, computed once."""

    def __init__(self, table):
        self.table = table

    def get(self, adapter, path):
        return self.table[path]


def tiny_features(videos: int):
    """(the tiny random adapter, a `_Features` of random clips "v0".."v{videos-1}"), seeded."""
    adapter = load_adapter("video_llava", "tiny", num_frames=F, seed=0)
    rng = np.random.default_rng(0)
    feats = {f"v{i}": adapter.video_features(adapter.pixels(rng.integers(0, 256, (F, 32, 32, 3), dtype=np.uint8)))
             for i in range(videos)}
    return adapter, _Features(feats)


@pytest.fixture(scope="module")
def setup():
    adapter, cache = tiny_features(3)
    records = [
        {"id": "a", "video_path": "v0", "prompt": "What color is the circle?", "context": "A red circle moving left.",
         "responses": ["red", "blue"]},
        {"id": "b", "video_path": "v1", "prompt": "How many objects are there?", "context": "Two objects.",
         "responses": ["two objects are there in the video", "two"]},
        {"id": "c", "video_path": "v2", "prompt": "Which direction?", "context": "It moves up.",
         "responses": ["up", "up"]},
    ]
    return adapter, cache, records


def _scores(adapter, cache, rec, context=None):
    chat = adapter.chat_prompt(prompts.judge_answer_prompt(rec["prompt"], context or rec["context"]))
    f = cache.get(adapter, rec["video_path"])
    with torch.no_grad():
        return sequence_logps(adapter, [chat, chat], rec["responses"], [f, f]).tolist()


def test_judge_answer_prompt_holds_context_and_question():
    p = prompts.judge_answer_prompt("  What color is it? ", " A red ball. ")
    assert "A red ball." in p and "What color is it?" in p and p.index("A red ball.") < p.index("What color")


def test_likelihood_judge_names_the_likelier_response_in_both_orders(setup):
    adapter, cache, records = setup
    cfg = load_config("smoke", ["judge.mode=likelihood", "judge.temperature=0"])
    out = judge_pairs(adapter, cache, records, cfg, seed_key=(0, 0), show=False)
    assert [j["id"] for j in out] == ["a", "b", "c"]
    for rec, j in zip(records[:2], out[:2]):
        s1, s2 = _scores(adapter, cache, rec)
        better = "y1" if s1 > s2 else "y2"
        assert j["kept"] and j["reason"] == "kept" and j["verdicts"] == [better, better]
        # the same two scores, shown in each order: the raw letters mirror each other
        assert j["raw_verdicts"] == (["A", "B"] if better == "y1" else ["B", "A"])
        assert j["judge_outputs"][0] == f"logp(A)={s1:.4f} logp(B)={s2:.4f}"
        assert j["judge_outputs"][1] == f"logp(A)={s2:.4f} logp(B)={s1:.4f}"
    assert out[2]["reason"] == "identical" and not out[2]["kept"]


def test_likelihood_judge_reads_the_context(setup):
    adapter, cache, records = setup
    rec = records[0]
    assert _scores(adapter, cache, rec) != _scores(adapter, cache, rec, context="A blue square moving down.")


def test_likelihood_judge_tie_margin(setup):
    adapter, cache, records = setup
    s1, s2 = _scores(adapter, cache, records[0])
    cfg = load_config("smoke", ["judge.mode=likelihood", "judge.temperature=0",
                                f"judge.tie_margin={abs(s1 - s2) + 1e-3}"])
    out = judge_pairs(adapter, cache, records[:1], cfg, seed_key=(0, 0), show=False)
    assert out[0]["reason"] == "tie" and out[0]["raw_verdicts"] == ["tie", "tie"]


def test_likelihood_judge_sampled_is_seeded(setup):
    adapter, cache, records = setup
    cfg = load_config("smoke", ["judge.mode=likelihood", "judge.temperature=50"])
    a = judge_pairs(adapter, cache, records, cfg, seed_key=(3, 1), show=False)
    b = judge_pairs(adapter, cache, records, cfg, seed_key=(3, 1), show=False)
    assert a == b
    assert {tuple(j["raw_verdicts"]) for j in a} <= {("A", "A"), ("A", "B"), ("B", "A"), ("B", "B")}


def test_context_temperature_zero_gives_greedy_contexts(setup):
    from isrt.stages import generate_contexts
    adapter, cache, _ = setup
    videos, previous = ["v0", "v1", "v2"], {"v1": "Two objects."}

    def contexts(over, key):
        cfg = load_config("smoke", over + ["sampling.context_max_new_tokens=12"])
        return generate_contexts(adapter, cache, videos, previous, cfg, seed_key=key, show=False)

    greedy = [contexts(["sampling.context_temperature=0"], k) for k in ((0, 0), (1, 5))]
    assert greedy[0] == greedy[1]  # no sampling: the seed does not matter
    sampled = [contexts(["sampling.temperature=1.0"], k) for k in ((0, 0), (1, 5))]
    assert sampled[0] != sampled[1]  # null: c_t is sampled at sampling.temperature


def test_judge_prompts_without_context_leave_the_description_line_out():
    for p in (prompts.judge_prompt("Q?", None, "a", "b"), prompts.judge_answer_prompt("Q?", None)):
        assert "Description" not in p and "Q?" in p
    assert prompts.judge_prompt("Q?", "ctx", "a", "b").replace("Description of the video: ctx\n", "") == \
        prompts.judge_prompt("Q?", None, "a", "b")


def _audit_records(records):
    out = [dict(r) for r in records]
    out[0]["previous_context"] = "A blue square moving down."  # c_{t-1} for v0 only
    return out


def test_audit_judges_the_same_pairs_without_context_and_with_the_previous_one(setup):
    adapter, cache, records = setup
    recs = _audit_records(records)
    over = ["judge.mode=likelihood", "judge.temperature=0"]
    main = judge_pairs(adapter, cache, recs, load_config("smoke", over), seed_key=(0, 0), show=False)
    plain = judge_pairs(adapter, cache, recs, load_config("smoke", over + ["judge.audit=false"]), seed_key=(0, 0),
                        show=False)
    assert [{k: v for k, v in j.items() if k != "audit"} for j in main] == plain  # training verdicts untouched
    assert all("audit" not in j for j in plain)
    assert all(j["context"] == "current" for j in main)
    assert main[0]["pick"] == main[0]["verdicts"][0] and main[2]["pick"] is None  # identical: a tie
    for kind in ("none", "previous"):
        alone = judge_pairs(adapter, cache, recs, load_config("smoke", over + [f"judge.context={kind}",
                                                                                "judge.audit=false"]),
                            seed_key=(0, 0), show=False)
        for j, a in zip(main, alone):
            if kind == "previous" and j["id"] != "a":
                assert j["audit"]["previous"] is None  # no c_{t-1}: no previous-context verdict
                continue
            assert j["audit"][kind] == {k: a[k] for k in ("verdicts", "raw_verdicts", "pick")}
            assert a["context"] == kind
    # the three judges read different things: v0's scores move with the context
    s_now, s_prev = _scores(adapter, cache, recs[0]), _scores(adapter, cache, recs[0], recs[0]["previous_context"])
    assert s_now != s_prev


def test_judge_context_is_checked():
    with pytest.raises(ValueError, match="judge.context"):
        load_config("smoke", ["judge.context=both"])


def test_generate_judge_verdicts_do_not_depend_on_how_pairs_are_split(setup):
    adapter, cache, records = setup
    cfg = load_config("smoke", ["judge.mode=generate", "judge.temperature=1.0", "judge.max_new_tokens=6",
                                "judge.audit=false", "sampling.batch_size=2"])
    whole = judge_pairs(adapter, cache, records, cfg, seed_key=(0, 1), show=False)
    halves = [judge_pairs(adapter, cache, part, cfg, seed_key=(0, 1), show=False) for part in (records[:1], records[1:])]
    assert whole == halves[0] + halves[1]  # two ranks' shards judge each pair as one rank does
    assert judge_pairs(adapter, cache, records, cfg, seed_key=(0, 2), show=False) != whole


def test_contrast_judge_scores_what_the_context_adds(setup):
    """judge.contrast: each response scored log p(y | video, c_t, q) - log p(y | video, q); the
    verdict follows that difference, and a judge reading nothing is the plain one."""
    adapter, cache, records = setup
    cfg = load_config("smoke", ["judge.mode=likelihood", "judge.temperature=0", "judge.contrast=true"])
    out = judge_pairs(adapter, cache, records, cfg, seed_key=(0, 0), show=False)
    for rec, j in zip(records, out):
        with_c = _scores(adapter, cache, rec)
        chat = adapter.chat_prompt(prompts.judge_answer_prompt(rec["prompt"], None))
        f = cache.get(adapter, rec["video_path"])
        with torch.no_grad():
            without = sequence_logps(adapter, [chat, chat], rec["responses"], [f, f]).tolist()
        pmi = [a - b for a, b in zip(with_c, without)]
        assert j["judge_outputs"][0] == f"pmi(A)={pmi[0]:.4f} pmi(B)={pmi[1]:.4f}"
        if rec["responses"][0] != rec["responses"][1]:
            assert j["pick"] == ("y1" if pmi[0] > pmi[1] else "y2")
        assert j["audit"]["none"]["pick"] == (None if rec["responses"][0] == rec["responses"][1]
                                              else "y1" if without[0] > without[1] else "y2")
    plain = judge_pairs(adapter, cache, records, load_config("smoke", ["judge.mode=likelihood", "judge.temperature=0",
                                                                        "judge.context=none"]),
                        seed_key=(0, 0), show=False)
    nocontrast = judge_pairs(adapter, cache, records, load_config("smoke", [
        "judge.mode=likelihood", "judge.temperature=0", "judge.context=none", "judge.contrast=true"]),
        seed_key=(0, 0), show=False)
    assert [j["judge_outputs"] for j in plain] == [j["judge_outputs"] for j in nocontrast]


def test_calibrated_judge_subtracts_the_score_with_other_videos(setup):
    """judge.calibrate K: each response scored log p(y | V, c_t, q) minus the mean over K other
    videos V' of log p(y | V', c'_t, q) (their frames and their own context, this question), the
    same V' for both responses of a pair; the verdict follows that difference."""
    adapter, cache, records = setup
    cfg = load_config("smoke", ["judge.mode=likelihood", "judge.temperature=0", "judge.calibrate=2"])
    out = judge_pairs(adapter, cache, records, cfg, seed_key=(0, 0), show=False)
    others = other_videos(records, 2, ((0, 0), "calibrate"))
    for rec, j in zip(records, out):
        assert sorted(o["video_path"] for o in others[rec["id"]]) == sorted(
            r["video_path"] for r in records if r is not rec)
        own = _scores(adapter, cache, rec)
        base = [0.0, 0.0]
        for o in others[rec["id"]]:
            chat = adapter.chat_prompt(prompts.judge_answer_prompt(rec["prompt"], o["context"]))
            f = cache.get(adapter, o["video_path"])
            with torch.no_grad():
                lp = sequence_logps(adapter, [chat, chat], rec["responses"], [f, f]).tolist()
            base = [b + x / 2 for b, x in zip(base, lp)]
        cal = [a - b for a, b in zip(own, base)]
        assert j["judge_outputs"][0] == f"cal(A)={cal[0]:.4f} cal(B)={cal[1]:.4f}"
        if rec["responses"][0] != rec["responses"][1]:
            assert j["pick"] == ("y1" if cal[0] > cal[1] else "y2")


def test_calibration_draws_do_not_depend_on_how_pairs_are_split(setup):
    """Each rank judges its shard but draws other videos from the whole pool, per pair id."""
    adapter, cache, records = setup
    cfg = load_config("smoke", ["judge.mode=likelihood", "judge.temperature=0", "judge.calibrate=1"])
    whole = judge_pairs(adapter, cache, records, cfg, seed_key=(0, 1), show=False)
    halves = [judge_pairs(adapter, cache, part, cfg, seed_key=(0, 1), show=False, pool=records)
              for part in (records[:1], records[1:])]
    assert whole == halves[0] + halves[1]
    draws = {seed: other_videos(records, 1, seed) for seed in range(6)}
    assert len({tuple(o["id"] for o in d["a"]) for d in draws.values()}) == 2  # v1 or v2, seeded
    assert other_videos(records[:1], 3, 0) == {"a": []}  # no other video: nothing to subtract


def test_calibrate_is_checked():
    from isrt.config import ConfigError
    for bad, match in ((["judge.calibrate=2", "judge.mode=score"], "judge.calibrate"),
                       (["judge.calibrate=-1", "judge.mode=likelihood"], "judge.calibrate"),
                       (["judge.calibrate=2", "judge.mode=likelihood", "judge.contrast=true"], "judge.calibrate"),
                       (["judge.calibrate=2", "judge.mode=likelihood", "sampling.candidates=4"], "candidates")):
        with pytest.raises(ConfigError, match=match):
            load_config("smoke", bad)


def test_contrast_needs_the_likelihood_judge():
    from isrt.config import ConfigError
    with pytest.raises(ConfigError, match="judge.contrast"):
        load_config("smoke", ["judge.contrast=true", "judge.mode=score"])


def test_contexts_and_responses_do_not_depend_on_batching_or_order(setup):
    """../shared/DESIGN.md: sampling is seeded per record, so the same config gives the same
    samples on any number of ranks, whichever records a rank gets and in whatever batches."""
    from isrt.stages import generate_contexts, generate_responses
    adapter, cache, records = setup
    cfg = load_config("smoke", ["sampling.temperature=1.0", "sampling.context_max_new_tokens=8",
                                "sampling.max_new_tokens=6", "sampling.batch_size=3"])
    one = load_config("smoke", ["sampling.temperature=1.0", "sampling.context_max_new_tokens=8",
                                "sampling.max_new_tokens=6", "sampling.batch_size=1"])
    videos = list(dict.fromkeys(r["video_path"] for r in records))
    whole = generate_contexts(adapter, cache, videos, {}, cfg, seed_key=(0, 1), show=False)
    split = {}
    for part in (videos[::2], videos[1::2][::-1]):  # two "ranks", one in reverse order, batches of 1
        split.update(generate_contexts(adapter, cache, part, {}, one, seed_key=(0, 1), show=False))
    assert split == whole
    resp = generate_responses(adapter, cache, records, cfg, seed_key=(0, 1), show=False)
    parts = {}
    for part in (records[1::2], records[::2][::-1]):
        parts.update(generate_responses(adapter, cache, part, one, seed_key=(0, 1), show=False))
    assert parts == resp
    assert generate_responses(adapter, cache, records, cfg, seed_key=(1, 1), show=False) != resp
