"""The demo's gate (isrt.gate) and how the report states it."""
import json

import pytest

from isrt import gate as G
from isrt.engine.synthetic import caption, make_scene, questions
from isrt.report.collect import collect
from isrt.report.conclusions import conclusions


def _records(n_videos: int) -> list[dict]:
    """Synthetic records: one count and one other question per clip (as data.synthetic_ask_first=[count])."""
    import numpy as np
    out = []
    for i in range(n_videos):
        scene = make_scene(9, i, 64, 64)
        for j, (q, a) in enumerate(questions(scene, np.random.default_rng(i), 2, ("count",))):
            out.append(dict(id=f"v{i}_q{j}", video=f"v{i}.mp4", video_path=f"/pool/v{i}.mp4", prompt=q, answer=a,
                            caption=caption(scene)))
    return out


@pytest.fixture
def fake_model(monkeypatch):
    """pi_0 answers every question "two" (the planted prior); its description of a clip is whatever
    `said` maps the clip to (default: the gold caption)."""
    import isrt.eval.answers as A

    said: dict = {}
    seen: dict = {}

    def answers(adapter, cache, records, **kw):
        seen["answered"] = [r["id"] for r in records]
        return [dict(r, prediction="two") for r in records]

    def descriptions(adapter, cache, videos, **kw):
        seen["described"] = list(videos)
        return {v: said.get(v, gold[v]) for v in videos}

    records = _records(40)
    gold = {r["video_path"]: r["caption"] for r in records}
    monkeypatch.setattr(A, "greedy_answers", answers)
    monkeypatch.setattr(A, "greedy_descriptions", descriptions)
    return records, said, seen


def _gate(records, **kw):
    args = dict(question_type="count", questions=30, margin=0.2, alpha=0.05, batch_size=8, max_new_tokens=4,
                describe_max_new_tokens=48) | kw
    return G.run_gate(None, None, records, **args)


def test_gate_passes_when_the_descriptions_know_what_the_answers_do_not(fake_model):
    records, _, seen = fake_model
    g = _gate(records)
    count = [r for r in records if r["prompt"] == "How many objects are there?"][:30]
    assert seen["answered"] == [r["id"] for r in count] and len(seen["described"]) == 30
    right = sum(r["answer"] == "two" for r in count)
    assert (g["n"], g["answers_right"], g["descriptions_right"]) == (30, right, 30)
    assert (g["b"], g["c"]) == (30 - right, 0) and g["p"] == pytest.approx(0.5 ** (30 - right))
    assert g["passed"] and g["answers"] == {"two": 30}
    assert G.gate_line(g).startswith("gate passed on 30 held-out count questions")


def test_gate_fails_on_a_small_gap_or_no_significance(fake_model):
    records, said, _ = fake_model
    count = [r for r in records if r["prompt"] == "How many objects are there?"]
    for r in count:  # descriptions that always say "Two objects": no better than the answers
        said[r["video_path"]] = "Two objects on a plain black background: a red square moving left."
    g = _gate(records)
    assert g["b"] == 0 and g["gap"] == 0 and not g["passed"]
    said.clear()
    g = _gate(records, margin=1.0)  # significant, but the gap is not the whole range
    assert g["p"] < 0.05 and not g["passed"]
    none = _gate([r for r in records if r not in count])  # no question of the type: nothing passes
    assert none["n"] == 0 and not none["passed"]
    assert "FAILED" in G.gate_line(g)


def _run_with_gate(tmp_path, gate: dict | None, prior: bool):
    run = tmp_path / "run"
    run.mkdir(parents=True)
    ws = "warmstart:\n  videos: 8\n  qa_prior:\n    count: two\n" if prior else ""
    (run / "config.yaml").write_text(f"preset: test\niterations: 1\n{ws}")
    if gate is not None:
        (run / "gate.json").write_text(json.dumps(gate))
    return conclusions(collect(run))


def test_the_report_states_the_gate_and_the_planted_prior(tmp_path, fake_model):
    records, said, _ = fake_model
    passed = _gate(records)
    c = _run_with_gate(tmp_path / "a", passed, prior=True)
    assert c["gate_passed"] is True
    assert c["lines"][0].startswith("**Planted prior**: the warm start was taught a language prior on purpose "
                                    "(every count question answered \"two\"")
    assert "not a benchmark result" in c["lines"][0]
    assert c["lines"][1].startswith("**Gate**: Gate passed on 30 held-out count questions")
    failed = _gate(records, margin=1.0)
    c = _run_with_gate(tmp_path / "b", failed, prior=True)
    assert c["gate_passed"] is False and "what follows does not test the mechanism" in c["lines"][1]
    c = _run_with_gate(tmp_path / "c", None, prior=False)
    assert c["gate_passed"] is None and not any(line.startswith(("**Gate", "**Planted")) for line in c["lines"])
