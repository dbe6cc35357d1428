"""isrt.report on hand-built run directories with known numbers (same file shapes as isrt.loop
writes; no model is run)."""
import json
from pathlib import Path

import pytest

from isrt.report import main, write_report
from isrt.report.collect import answer_spread, collect
from isrt.report.conclusions import conclusions

PROMPTS = [("p1", "What color is the circle?", "red"), ("p2", "How many objects are there?", "two"),
           ("p3", "Which direction does the square move?", "left"),
           ("p4", "What happens in the video?", "a man walks slowly through the park")]  # long: not scored


def _jsonl(path: Path, rows, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(extra_lines))


def _iteration(run: Path, t: int, responses: dict, judged: dict, *, stages=(1, 2, 3), dpo=None, eval_rows=None):
    """responses: id -> [y1, y2]; judged: id -> (raw verdicts, mapped verdicts, reason)."""
    it = run / f"iter_{t:02d}"
    it.mkdir(parents=True)
    recs = [{"id": i, "video": f"videos/{i}.mp4", "prompt": q, "answer": a, "caption": "c", "context": "ctx",
             "responses": responses[i]} for i, q, a in PROMPTS if i in responses]
    if 1 in stages:
        _jsonl(it / "responses.jsonl", recs)
        (it / "stage1.json").write_text(json.dumps({"prompts": len(recs), "responses": len(recs), "bad_videos": 0,
                                                    "iteration": t, "stage": 1, "seconds": 10.0 + t}))
    if 2 in stages:
        judgments, prefs = [], []
        for r in recs:
            raw, verdicts, reason = judged[r["id"]]
            judgments.append({"id": r["id"], "verdicts": verdicts, "kept": reason == "kept", "reason": reason,
                              "raw_verdicts": raw, "judge_outputs": ["", ""]})
            if reason == "kept":
                w = 0 if verdicts[0] == "y1" else 1
                prefs.append({"id": r["id"], "prompt": r["prompt"], "answer": r["answer"],
                              "chosen": r["responses"][w], "rejected": r["responses"][1 - w]})
        _jsonl(it / "judgments.jsonl", judgments)
        _jsonl(it / "preferences.jsonl", prefs)
        (it / "stage2.json").write_text(json.dumps({"judged": len(judgments), "kept": len(prefs), "iteration": t,
                                                    "stage": 2, "seconds": 5.0}))
    if 3 in stages:
        (it / "stage3.json").write_text(json.dumps(dict(dpo or {}, iteration=t, stage=3, seconds=2.5)))
    if eval_rows is not None:
        _jsonl(it / "eval.jsonl", eval_rows)
    return it


KEEP_Y1 = (["A", "B"], ["y1", "y1"], "kept")
KEEP_Y2 = (["B", "A"], ["y2", "y2"], "kept")
DISAGREE = (["A", "A"], ["y1", "y2"], "disagreement")
UNPARSEABLE = ([None, "A"], [None, "y2"], "unparseable")
TIE = (["tie", "B"], [None, "y1"], "tie")
IDENTICAL = (["tie", "tie"], [None, None], "identical")


@pytest.fixture
def failing_run(tmp_path):
    """Accuracy flat (2/6 -> 2/6), responses 3x longer, one iteration unfinished."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("preset: test\niterations: 3\nmodel:\n  family: video_llava\n  source: tiny\n"
                                     "judge:\n  mode: generate\n")
    _iteration(run, 0, {"p1": ["red", "blue"], "p2": ["There are 2 objects", "three"], "p3": ["up", "down"],
                        "p4": ["x y", "z"]},
               {"p1": KEEP_Y1, "p2": KEEP_Y2, "p3": DISAGREE, "p4": UNPARSEABLE},
               dpo={"steps": 1, "pairs": 2, "first_loss": 0.6931, "loss": 0.69, "reward_margin": 0.01,
                    "reward_accuracy": 0.5})
    it1 = _iteration(run, 1, {"p1": ["the circle is red and it moves slowly", "it is blue and it moves slowly"],
                              "p2": ["there are three objects in the video here", "two objects in the video, I count"],
                              "p3": ["it moves up and keeps going up", "it moves down and keeps going down"],
                              "p4": ["a b c d", "e f g"]},
                     {"p1": KEEP_Y2, "p2": TIE, "p3": DISAGREE, "p4": KEEP_Y1},
                     dpo={"steps": 1, "pairs": 2, "first_loss": 0.69, "loss": 0.60, "reward_margin": 0.2,
                          "reward_accuracy": 1.0})
    with open(it1 / "judgments.jsonl", "a") as f:
        f.write("{not json\n")
    _iteration(run, 2, {"p1": ["the circle is red I am quite sure", "it is blue I am quite sure"],
                        "p2": ["there are three objects", "two objects in total"], "p3": ["it goes up", "it goes down"],
                        "p4": ["a b", "c"]}, {}, stages=(1,))
    return run


def test_swap_agreement_leaves_out_identical_pairs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("preset: test\niterations: 1\njudge:\n  mode: likelihood\n")
    _iteration(run, 0, {"p1": ["red", "blue"], "p2": ["three", "three"], "p3": ["up", "down"]},
               {"p1": KEEP_Y1, "p2": IDENTICAL, "p3": TIE})
    r0 = collect(run)["iterations"][0]
    assert (r0["swap_agreement"], r0["swap_n"]) == (1 / 2, 2)  # p1 agrees, p3's tie names nothing


def test_numbers_come_from_the_files(failing_run):
    data = collect(failing_run)
    r0, r1, r2 = data["iterations"]
    # sampled accuracy: p1 "red" ok, p2 "There are 2 objects" ok; p3 none; p4 long, not scored
    assert (r0["sampled_correct"], r0["sampled_n"]) == (2, 6)
    assert r0["words_mean"] == 12 / 8 and r0["words_median"] == 1
    # swap agreement: 3 pairs with both verdicts parsed (p1, p2, p3), 2 agree
    assert (r0["swap_agreement"], r0["swap_n"]) == (2 / 3, 3)
    # kept: p1 chose "red" (correct), p2 chose "three" (wrong)
    assert (r0["gt_hits"], r0["gt_n"], r0["gt_agreement"]) == (1, 2, 0.5)
    # every verdict: p1's two verdicts name the correct y1, p2's name the wrong y2
    assert (r0["verdict_gt_agreement"], r0["verdict_gt_n"]) == (0.5, 4)
    assert r0["kept"] == 2 and r0["judged"] == 4 and r0["dropped"] == {"disagreement": 1, "unparseable": 1}
    assert (r0["dpo_loss"], r0["dpo_margin"], r0["dpo_acc"]) == (0.69, 0.01, 0.5)
    assert r0["seconds"] == {"1": 10.0, "2": 5.0, "3": 2.5}
    # iteration 1: p1 y1 ok, y2 wrong; p2 y1 wrong ("three"), y2 ok; p3 neither
    assert (r1["sampled_correct"], r1["sampled_n"]) == (2, 6)
    assert r1["dropped"] == {"tie": 1, "disagreement": 1}
    assert (r1["gt_hits"], r1["gt_n"]) == (0, 1)  # p1 kept with the wrong (blue) answer chosen
    assert r1["swap_n"] == 4 and r1["swap_agreement"] == 2 / 4  # the tie pair parsed but names no response
    # iteration 2 is partial
    assert r2["missing_stages"] == [2, 3] and (r2["sampled_correct"], r2["sampled_n"]) == (2, 6)
    assert r2["words_mean"] == 32 / 8 and "kept" not in r2 and "dpo_loss" not in r2
    assert any("iter_01/judgments.jsonl:5: bad JSONL line" in p for p in data["problems"])


def test_report_says_the_method_did_not_help(failing_run):
    path = write_report(failing_run)
    text = path.read_text()
    concl = conclusions(collect(failing_run))
    assert concl["accuracy_up"] is False and concl["helped"] is False and concl["length_grew"] is True
    # mean words: iteration 0 has 12 / 8, the last one with responses (iteration 2, partial) 32 / 8
    assert concl["length_growth"] == pytest.approx((32 / 8) / (12 / 8) - 1)
    assert "did not help" in text
    assert "iter_02: stage(s) 2, 3 not finished" in text and "2 of 3 planned iterations finished" in text
    assert "bad JSONL line" in text
    for name in ("overview", "accuracy", "length", "judge", "dpo"):
        assert (failing_run / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name}.png)" in text
    assert not list(failing_run.glob(".*.tmp")), "temporary files left behind"
    report = json.loads((failing_run / "report.json").read_text())
    assert report["iterations"][0]["sampled_acc"] == 2 / 6 and report["conclusions"]["helped"] is False
    # rewriting is deterministic
    assert write_report(failing_run).read_text() == text


def test_length_growth_with_flat_accuracy_is_called_out(failing_run):
    import shutil
    shutil.rmtree(failing_run / "iter_02")
    concl = conclusions(collect(failing_run))
    growth = (51 / 8) / (12 / 8) - 1  # iteration 1: 51 words over 8 responses
    assert concl["length_growth"] == pytest.approx(growth) and concl["length_grew"]
    text = write_report(failing_run).read_text()
    assert f"{100 * growth:+.1f}%" in text
    assert "grew by more than 10%" in text and "length-bias failure" in text
    assert "the method did not help on this run: accuracy did not go up" in text


def _greedy(ids_correct: int, n: int = 10, words: int = 3):
    return [{"id": f"e{i}", "prediction": ("red " if i < ids_correct else "blue ") + "x " * (words - 1),
             "answer": "red", "judge_score": 4 if i < ids_correct else 1} for i in range(n)]


def test_report_says_the_method_helped_with_greedy_eval(tmp_path):
    run = tmp_path / "good"
    run.mkdir()
    (run / "config.yaml").write_text("iterations: 2\n")
    same = {"p1": ["red", "blue"], "p2": ["two", "three"]}
    _iteration(run, 0, same, {"p1": KEEP_Y1, "p2": KEEP_Y1}, eval_rows=_greedy(1),
               dpo={"steps": 1, "pairs": 2, "first_loss": 0.69, "loss": 0.5, "reward_margin": 0.3,
                    "reward_accuracy": 1.0})
    _iteration(run, 1, same, {"p1": KEEP_Y1, "p2": KEEP_Y1}, eval_rows=_greedy(5),
               dpo={"steps": 1, "pairs": 2, "first_loss": 0.6, "loss": 0.4, "reward_margin": 0.5,
                    "reward_accuracy": 1.0})
    _jsonl(run / "final_eval.jsonl", _greedy(9))
    data = collect(run)
    assert data["iterations"][0]["greedy_acc"] == 0.1 and data["final"]["greedy_acc"] == 0.9
    assert data["iterations"][1]["judge_acc"] == 0.5 and data["iterations"][1]["judge_score"] == 2.5
    concl = conclusions(data)
    assert concl["accuracy_up_beyond_noise"] and concl["helped"] and concl["length_grew"] is False
    text = write_report(run).read_text()
    assert "went up from 10.0% (pi_0, 1/10) to 90.0% (pi_2, 9/10)" in text
    # paired on the same 10 ids: 0 right->wrong, 8 wrong->right, McNemar p = 2 / 2^8
    assert concl["accuracy_p"] == 2 / 256 and data["paired"]["overall"]["b"] == 0
    assert "0 questions went right->wrong and 8 wrong->right, exact McNemar p = 0.0078: beyond noise on this run" \
        in text
    assert "the method helped on this run: accuracy went up beyond noise (paired exact McNemar p = 0.0078)" in text
    assert "| pi_2 (final) |" in text
    # every kept pair chose the correct response: one-sided binomial p = 1 / 2^4
    assert "chose the correct one 4 times (100.0%; 50% is chance, one-sided binomial p = 0.062)" in text


def _shapes(said: list[str]):
    gold = ["circle", "square", "triangle"] * 4
    return [{"id": f"s{i}", "prompt": "What shape is the red object?", "answer": g, "prediction": w}
            for i, (g, w) in enumerate(zip(gold, said))]


def test_answer_spread_and_collapse(tmp_path):
    """Per closed kind: the most frequent answer's share vs the gold's; a kind that ends on one
    word far more often than any gold answer is called out as collapsed."""
    rows = _shapes(["circle", "square", "triangle"] * 4) + [
        {"id": "c0", "answer": "red", "prediction": "It is Red."},
        {"id": "c1", "answer": "blue", "prediction": "no idea"},
        {"id": "k0", "answer": "two", "prediction": "the red one"},  # "one" as a pronoun: no count named
        {"id": "k1", "answer": "one", "prediction": "One."},
        {"id": "g0", "answer": "A square", "prediction": "not a circle but a square"},
        {"id": "n0", "answer": "a man walks", "prediction": "a man"}]  # not a one-word closed kind
    sp = answer_spread(rows)
    assert sp["shape"] == {"n": 13, "accuracy": 13 / 13, "top": "square", "top_share": 5 / 13, "gold_top_share": 5 / 13}
    assert sp["color"] == {"n": 2, "accuracy": 0.5, "top": "red", "top_share": 0.5, "gold_top_share": 0.5}
    assert sp["count"] == {"n": 2, "accuracy": 0.5, "top": "one", "top_share": 0.5, "gold_top_share": 0.5}
    assert set(sp) == {"shape", "color", "count"}
    run = tmp_path / "collapse"
    run.mkdir()
    (run / "config.yaml").write_text("iterations: 1\n")
    _iteration(run, 0, {"p1": ["red", "blue"]}, {"p1": KEEP_Y1}, eval_rows=_shapes(["circle", "square", "triangle"] * 4))
    _jsonl(run / "final_eval.jsonl", _shapes(["circle"] * 11 + ["square"]))
    text = write_report(run).read_text()
    assert "**Answer collapse**: shape questions got 'circle' for 92% of the last greedy answers (pi_0: 'circle' 33%" in text
    assert "| pi_1 (final) | 33%; circle 92% (33%, n=12) |" in text
    # no collapse line when the answers stay spread
    _jsonl(run / "final_eval.jsonl", _shapes(["circle", "square", "triangle"] * 4))
    assert "Answer collapse" not in write_report(run).read_text()


GOLD = "Two objects on a plain black background: a red circle moving up and a blue square moving left."


def _context_run(tmp_path, contexts: list[str], answers: list[list[str]]):
    """One iteration, prompts about GOLD's scene; contexts[i] is prompt i's c_t."""
    questions = [("What color is the circle?", "red"), ("How many objects are there?", "two"),
                 ("Which direction does the blue square move?", "left"), ("What shape is the blue object?", "square")]
    run = tmp_path / "ctx"
    it = run / "iter_00"
    it.mkdir(parents=True)
    recs = [{"id": f"q{i}", "prompt": q, "answer": a, "caption": GOLD, "context": c, "responses": ys}
            for i, ((q, a), c, ys) in enumerate(zip(questions, contexts, answers))]
    recs.append({"id": "real", "prompt": "What happens?", "answer": "a dog runs", "caption": "A dog runs.",
                 "context": "A dog runs.", "responses": ["x", "y"]})  # not the synthetic wording: left out
    _jsonl(it / "responses.jsonl", recs)
    (it / "stage1.json").write_text(json.dumps({"prompts": len(recs)}))
    return run


def test_context_names_the_answer(tmp_path):
    """The share of prompts whose c_t gives the gold answer, read like the synthetic captions,
    against the policy's sampled accuracy on the same prompts."""
    wrong = "Three objects on a plain black background: a green circle moving up and a blue triangle moving right."
    run = _context_run(tmp_path, [GOLD, wrong, GOLD, "I see a video."],
                       [["red", "red"], ["two", "three"], ["up", "left"], ["square", "square"]])
    row = collect(run)["iterations"][0]
    assert (row["context_n"], row["context_correct"], row["context_acc"]) == (4, 2, 0.5)
    assert (row["context_sampled_n"], row["context_sampled_correct"]) == (8, 6)
    text = write_report(run).read_text()
    assert "**Evidence**: the contexts c_t named the answer for 50.0% of the pool's prompts over all iterations (2/4" in text
    assert "were right for 75.0%: the judge, which reads c_t, had worse evidence than the policy" in text
    assert "| c_t names answer |" in text and "| 50.0% (n=4) |" in text
    run2 = _context_run(tmp_path / "b", [GOLD] * 4, [["blue", "red"], ["two", "three"], ["up", "left"], ["x", "y"]])
    assert "the judge had at least the policy's evidence" in write_report(run2).read_text()
    run3 = _context_run(tmp_path / "c", [GOLD] * 4, [[]] * 4)  # no sampled answers: no comparison
    assert "(4/4, read from the synthetic captions' wording); no sampled answers to compare with." \
        in write_report(run3).read_text()


def test_no_context_column_without_synthetic_captions(failing_run):
    text = write_report(failing_run).read_text()
    assert "c_t names answer" not in text and "**Evidence**" not in text and "answer_from_caption" not in text


def test_small_gain_is_called_noise(tmp_path):
    run = tmp_path / "noisy"
    run.mkdir()
    same = {"p1": ["red", "blue"]}
    _iteration(run, 0, same, {"p1": KEEP_Y1}, eval_rows=_greedy(4))
    _iteration(run, 1, same, {"p1": KEEP_Y1}, eval_rows=_greedy(5))
    concl = conclusions(collect(run))
    assert concl["accuracy_up"] and not concl["accuracy_up_beyond_noise"] and concl["helped"] is False
    assert concl["accuracy_p"] == 1.0  # one question went wrong->right, none the other way
    assert "accuracy went up only within noise (paired exact McNemar p = 1)" in write_report(run).read_text()


def test_zero_kept_pairs_and_tokens(tmp_path):
    run = tmp_path / "zero"
    run.mkdir()
    _iteration(run, 0, {"p1": ["red", "blue"], "p3": ["up", "down"]}, {"p1": TIE, "p3": DISAGREE},
               dpo={"steps": 0, "pairs": 0})

    class Tok:
        def encode(self, text, add_special_tokens=True):
            return list(text)

    data = collect(run, tokenizer=Tok())
    r0 = data["iterations"][0]
    assert r0["kept"] == 0 and r0["gt_n"] == 0 and r0["gt_agreement"] is None
    assert r0["tokens_mean"] == (3 + 4 + 2 + 4) / 4
    text = write_report(run, tokenizer=Tok()).read_text()
    assert "no pairs: no training" in text and "tokens mean" in text
    assert "kept 0 of 2 judged pairs" in text and "only pi_0 is measured" in text


def test_empty_and_missing_run_dirs(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    text = write_report(empty).read_text()
    assert "No iteration has started yet" in text and "no data yet" not in text
    assert (empty / "overview.png").exists()
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "missing")
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_cli(failing_run, capsys):
    assert main([str(failing_run), "--tokenizer", "none"]) == 0
    out = capsys.readouterr().out
    assert "Verdict: the method did not help" in out and f"report: {failing_run / 'report.md'}" in out


def test_answer_spread_names_counts_in_words():
    rows = [{"prompt": "How many objects are there?", "answer": "three", "prediction": p} for p in ("two", "2", "three")]
    assert answer_spread(rows)["count"]["top"] == "two"
