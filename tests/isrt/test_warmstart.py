"""The supervised warm start of the method (isrt.warmstart): its examples from the loop's own
prompt templates, its cached stage in a run directory, question types and scoring."""
from __future__ import annotations

from isrt import prompts as P
from isrt.engine import distributed
from isrt.engine.adapters import load_adapter
from isrt.engine.io import read_jsonl
from isrt.engine.synthetic import make_dataset
from isrt.engine.training.config import SFTConfig
from isrt.scoring import score_answer
from isrt.warmstart import evaluate_qa, question_type, sft_examples, warm_start

F = 2


def _adapter():
    return load_adapter("video_llava", "tiny", num_frames=F, seed=0, freeze_vision=False)


def test_sft_examples_from_a_synthetic_dataset(tmp_path):
    jsonl = make_dataset(tmp_path / "d", 2, seed=3, num_frames=4, size=32, questions_per_video=2)
    recs = read_jsonl(jsonl)
    a = _adapter()
    ex = sft_examples(recs, a, video_root=tmp_path / "d", kinds=("qa", "describe", "retro", "judge"), seed=0)
    kinds = [e.kind for e in ex]
    assert kinds.count("qa") == 4 and kinds.count("judge") == 4
    assert kinds.count("describe") == 2 and kinds.count("retro") == 2
    qa = [e for e in ex if e.kind == "qa"]
    assert [e.target for e in qa] == [r["answer"] for r in recs]
    assert qa[0].prompt == a.chat_prompt(P.response_prompt(recs[0]["prompt"]))
    desc = next(e for e in ex if e.kind == "describe")
    assert desc.prompt == a.chat_prompt(P.context_prompt(None)) and desc.target == recs[0]["caption"]
    assert desc.pixels is qa[0].pixels and desc.pixels.shape == (F, 3, a.image_size, a.image_size)
    retro = next(e for e in ex if e.kind == "retro")
    assert retro.target == recs[0]["caption"] and recs[0]["caption"] not in retro.prompt
    for e in ex:
        if e.kind == "judge":
            assert e.prompt.endswith(P.VERDICT_PREFIX) and e.target in P.VERDICT_CHOICES
    # the likelihood judge's kind: its own prompt with the gold caption -> the answer, capped per video
    ja = [e for e in sft_examples(recs, a, video_root=tmp_path / "d", kinds=("judge_answer",), judge_per_video=1)]
    firsts = [r for k, r in enumerate(recs) if k == 0 or r["video"] != recs[k - 1]["video"]]
    assert [e.target for e in ja] == [r["answer"] for r in firsts]
    assert ja[0].prompt == a.chat_prompt(P.judge_answer_prompt(recs[0]["prompt"], recs[0]["caption"]))


def test_warm_start_is_cached_in_its_folder(tmp_path):
    load_adapter("video_llava", "tiny", num_frames=F, seed=0).save_pretrained(tmp_path / "base")
    jsonl = make_dataset(tmp_path / "d", 2, seed=3, num_frames=4, size=32, questions_per_video=2)
    cfg = SFTConfig(steps=2, batch_size=4, lm="lora", lora_r=2, lora_alpha=4, align_steps=2, align_batch_size=2)
    r = warm_start(tmp_path / "sft", str(tmp_path / "base"), read_jsonl(jsonl), cfg, distributed.Dist(), seed=0,
                   num_frames=F, video_root=tmp_path / "d")
    assert not r.skipped and r.metrics["steps"] == 2 and r.metrics["kinds"] == {"qa": 4, "describe": 2, "judge": 2}
    b = load_adapter("video_llava", str(tmp_path / "sft"), num_frames=F)  # a plain HF folder
    assert not [n for n in b.model.state_dict() if "lora" in n]
    again = warm_start(tmp_path / "sft", str(tmp_path / "base"), [], cfg, distributed.Dist(), seed=0, num_frames=F)
    assert again.skipped and again.metrics["steps"] == 2


def test_scoring_rules():
    assert question_type("What color is the square?") == "color"
    assert question_type("How many objects are there?") == "count"
    # the warm start's evaluation scores as the report does (isrt.scoring.score_answer)
    assert score_answer("Red.", "red") and score_answer("The square is red", "red")
    assert not score_answer("red or blue", "red") and not score_answer("square", "circle")
    assert score_answer("two", "two") and score_answer("one circle", "circle")


def test_evaluate_qa_scores_the_loops_greedy_answers_by_question_type(tmp_path):
    from isrt.eval.answers import greedy_answers

    jsonl = make_dataset(tmp_path / "d", 3, seed=4, num_frames=4, size=32, questions_per_video=2)
    recs = read_jsonl(jsonl)
    a = _adapter()
    res = evaluate_qa(a, recs, video_root=tmp_path / "d", max_new_tokens=4, batch_size=4)
    rows = greedy_answers(a, None, recs, batch_size=3, max_new_tokens=4, video_root=tmp_path / "d")
    assert [x["response"] for x in res["answers"]] == [r["prediction"] for r in rows]
    assert res["n"] == len(recs) == sum(t["n"] for t in res["by_type"].values())
    right = [score_answer(r["prediction"], r["answer"]) for r in rows]
    assert res["accuracy"] == sum(right) / len(right)
    assert {question_type(r["prompt"]) for r in recs} == set(res["by_type"])


def test_a_planted_qa_prior_teaches_one_answer_for_its_type_only(tmp_path):
    jsonl = make_dataset(tmp_path / "d", 24, seed=3, num_frames=2, size=32, questions_per_video=4)
    recs = read_jsonl(jsonl)
    counts = [r for r in recs if question_type(r["prompt"]) == "count"]
    assert {r["answer"] for r in counts} > {"two"}  # the pool has other counts to leave out
    a = _adapter()
    kinds = ("qa", "describe", "judge_answer")
    plain = sft_examples(recs, a, video_root=tmp_path / "d", kinds=kinds, seed=0)
    prior = sft_examples(recs, a, video_root=tmp_path / "d", kinds=kinds, seed=0, qa_prior={"count": "two"})
    type_of = {a.chat_prompt(P.response_prompt(r["prompt"])): question_type(r["prompt"]) for r in recs}
    qa = lambda ex, t: [e.target for e in ex if e.kind == "qa" and type_of[e.prompt] == t]  # noqa: E731
    assert set(qa(prior, "count")) == {"two"} and qa(prior, "count") == [r["answer"] for r in counts
                                                                          if r["answer"] == "two"]
    for t in ("color", "shape", "direction"):
        assert qa(prior, t) == qa(plain, t)
    for kind in ("describe", "judge_answer"):  # the video is still described and read on every clip
        assert [e.target for e in prior if e.kind == kind] == [e.target for e in plain if e.kind == kind]


def test_a_planted_prior_can_leave_its_type_out_of_the_judge_examples_too(tmp_path):
    jsonl = make_dataset(tmp_path / "d", 24, seed=3, num_frames=2, size=32, questions_per_video=4)
    recs = read_jsonl(jsonl)
    a = _adapter()
    kinds = ("qa", "describe", "judge_answer")
    both = sft_examples(recs, a, video_root=tmp_path / "d", kinds=kinds, seed=0, qa_prior={"count": "two"},
                        judge_per_video=1)
    out = sft_examples(recs, a, video_root=tmp_path / "d", kinds=kinds, seed=0, qa_prior={"count": "two"},
                       judge_per_video=1, prior_in_judge=False)
    asked = lambda ex: [e.prompt for e in ex if e.kind == "judge_answer"]  # noqa: E731
    assert any("How many objects" in p for p in asked(both))
    assert not any("How many objects" in p for p in asked(out))
    assert len(asked(out)) == len(asked(both))  # each clip's one judge example moves to another question
    assert [e.target for e in out if e.kind != "judge_answer"] == [e.target for e in both if e.kind != "judge_answer"]
