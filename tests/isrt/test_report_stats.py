"""isrt.report's paired statistics: the exact tests against hand-computed values, paired accuracy
per question type, and the mechanism audit on hand-built run directories (file shapes as
isrt.loop and isrt.stages write them; no model is run)."""
import json
from pathlib import Path

import pytest

from isrt.report import write_report
from isrt.report.collect import collect
from isrt.report.conclusions import conclusions
from isrt.report.stats import binom_one_sided, mcnemar_exact, paired_counts, sign_test, sign_test_one_sided


def test_exact_tests_match_hand_computed_values():
    assert mcnemar_exact(0, 6) == 0.03125  # 2 * (1/2)^6
    assert mcnemar_exact(1, 7) == mcnemar_exact(7, 1) == 2 * (1 + 8) / 256
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0  # capped; no discordant pair
    assert binom_one_sided(8, 10) == 56 / 1024  # C(10,8) + C(10,9) + C(10,10) = 45 + 10 + 1
    assert binom_one_sided(0, 5) == 1.0 and binom_one_sided(6, 5) == 0.0
    assert binom_one_sided(2, 3, 0.25) == pytest.approx(3 * 0.25 ** 2 * 0.75 + 0.25 ** 3)
    # C(19, 0..5) = 1 + 19 + 171 + 969 + 3876 + 11628 = 16664
    assert sign_test(14, 5) == pytest.approx(2 * 16664 / 2 ** 19) and round(sign_test(14, 5), 3) == 0.064
    assert sign_test_one_sided(8, 2) == 56 / 1024


def test_paired_counts_by_type():
    before = {"a": ("color", [True]), "b": ("color", [False]), "c": ("shape", [True]), "d": ("shape", [True]),
              "only_before": ("color", [False])}
    after = {"a": ("color", [False]), "b": ("color", [True]), "c": ("shape", [True]), "d": ("shape", [False]),
             "only_after": ("color", [True])}
    out = paired_counts(before, after)
    assert out["overall"] == {"n": 4, "answers": 4, "k_before": 3, "k_after": 2, "acc_before": 0.75,
                              "acc_after": 0.5, "b": 2, "c": 1, "p": 1.0}
    assert (out["by_type"]["color"]["b"], out["by_type"]["color"]["c"]) == (1, 1)
    assert (out["by_type"]["shape"]["b"], out["by_type"]["shape"]["c"], out["by_type"]["shape"]["n"]) == (1, 0, 2)


def _jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _evals(right: dict[str, bool]):
    """Greedy eval rows: ids q* ask a colour (gold red), s* a shape (gold circle), t* carry their own type."""
    gold = {"q": "red", "s": "circle", "t": "yes"}
    wrong = {"q": "blue", "s": "square", "t": "no"}
    return [dict({"id": i, "prompt": "?", "answer": gold[i[0]], "prediction": gold[i[0]] if ok else wrong[i[0]]},
                 **({"qtype": "yes/no"} if i[0] == "t" else {})) for i, ok in right.items()]


def _paired_run(tmp_path, before: dict, after: dict) -> Path:
    run = tmp_path / "paired"
    (run / "iter_00").mkdir(parents=True)
    (run / "config.yaml").write_text("iterations: 1\n")
    _jsonl(run / "iter_00" / "eval.jsonl", _evals(before))
    _jsonl(run / "final_eval.jsonl", _evals(after))
    return run


def test_paired_accuracy_replaces_the_unpaired_band(tmp_path):
    """5/16 -> 12/17 is beyond two unpaired standard errors, but on the 16 shared questions only
    3 went right->wrong and 9 wrong->right: McNemar p = 2 * 299 / 4096, within noise."""
    before = {f"q{i}": i < 2 for i in range(10)} | {f"s{i}": i < 3 for i in range(6)}
    after = {f"q{i}": i > 0 for i in range(10)} | {f"s{i}": i in (0, 3) for i in range(6)} | {"q_new": True}
    data = collect(_paired_run(tmp_path, before, after))
    p = data["paired"]
    assert (p["kind"], p["before"], p["after"]) == ("greedy", 0, 1)
    assert {k: p["overall"][k] for k in ("n", "k_before", "k_after", "b", "c")} == \
        {"n": 16, "k_before": 5, "k_after": 11, "b": 3, "c": 9}
    assert p["overall"]["p"] == pytest.approx(2 * (1 + 12 + 66 + 220) / 4096)
    color, shape = p["by_type"]["color"], p["by_type"]["shape"]
    assert (color["b"], color["c"], color["p"]) == (1, 8, 2 * (1 + 9) / 512)
    assert (shape["b"], shape["c"], shape["p"]) == (2, 1, 1.0)
    concl = conclusions(data)
    assert concl["accuracy_up"] and not concl["accuracy_up_beyond_noise"] and concl["helped"] is False
    assert concl["accuracy_p"] == p["overall"]["p"]
    text = write_report(data["run_dir"]).read_text()
    assert "paired on the 16 questions both policies answered): went up from 31.2% (pi_0, 5/16) to 68.8% " \
           "(pi_1, 11/16), +37.5 points; 3 questions went right->wrong and 9 wrong->right, exact McNemar " \
           "p = 0.15: within noise on this run" in text
    assert "Unpaired, over all scored answers (5/16 -> 12/17)" in text
    assert "accuracy went up only within noise (paired exact McNemar p = 0.15)" in text
    assert "| type | n | pi_0 acc | pi_1 acc | right->wrong | wrong->right | McNemar p |" in text
    assert "| color | 10 | 20.0% | 90.0% | 1 | 8 | 0.039 |" in text
    assert "| all | 16 | 31.2% | 68.8% | 3 | 9 | 0.15 |" in text
    report = json.loads((Path(data["run_dir"]) / "report.json").read_text())
    assert report["paired"]["overall"]["c"] == 9 and report["conclusions"]["accuracy_p"] == p["overall"]["p"]


def test_paired_gain_beyond_noise_and_own_question_type(tmp_path):
    before = {f"q{i}": False for i in range(8)} | {"t0": False}
    after = {f"q{i}": True for i in range(8)} | {"t0": True}
    data = collect(_paired_run(tmp_path, before, after))
    assert set(data["paired"]["by_type"]) == {"color", "yes/no"}  # t0's own "qtype" field wins
    assert data["paired"]["overall"]["p"] == 2 / 2 ** 9
    concl = conclusions(data)
    assert concl["accuracy_up_beyond_noise"] and concl["helped"]
    assert "the method helped on this run: accuracy went up beyond noise (paired exact McNemar p = 0.0039)" \
        in write_report(data["run_dir"]).read_text()


# ---- mechanism audit ---------------------------------------------------------------------------
def _pair(right: str | None, train, none, prev="absent", kept=True, **extra):
    """(response record, judgment row); right: "y1"/"y2" is the one correct response (None: both are)."""
    return right, train, none, prev, kept, extra


def _audit(pick):
    return {"verdicts": [pick, pick], "raw_verdicts": ["A", "B"], "pick": pick}


def _mech_iteration(run: Path, t: int, pairs: dict):
    it = run / f"iter_{t:02d}"
    it.mkdir(parents=True)
    recs, rows = [], []
    for i, (right, train, none, prev, kept, extra) in pairs.items():
        ys = ["red", "red"] if right is None else (["red", "blue"] if right == "y1" else ["blue", "red"])
        recs.append({"id": i, "prompt": "What color is the circle?", "answer": "red", "context": "ctx",
                     "responses": ys})
        audit = {"none": extra.get("none_row", _audit(none)), "previous": None if prev == "absent" else _audit(prev)}
        rows.append({"id": i, "verdicts": [train, train], "kept": kept, "reason": "kept" if kept else "disagreement",
                     "raw_verdicts": ["A", "B"], "judge_outputs": ["", ""], "context": "current", "pick": train,
                     "audit": audit})
    _jsonl(it / "responses.jsonl", recs)
    _jsonl(it / "judgments.jsonl", rows)
    _jsonl(it / "preferences.jsonl", [])
    (it / "stage1.json").write_text(json.dumps({"prompts": len(recs)}))
    (it / "stage2.json").write_text(json.dumps({"judged": len(rows)}))


@pytest.fixture
def audit_run(tmp_path):
    """7 pairs with exactly one right response (and one with two): iteration 0 has no c_{t-1} judge."""
    run = tmp_path / "audit"
    run.mkdir()
    (run / "config.yaml").write_text("iterations: 2\n")
    _mech_iteration(run, 0, {
        "a0": _pair("y1", "y1", None, none_row={"verdicts": ["y2", "y2"], "raw_verdicts": ["B", "A"]}),  # no "pick"
        "a1": _pair("y2", "y2", "y2"),
        "a2": _pair("y1", None, "y1", kept=False),
        "a3": _pair(None, "y1", "y2")})  # both right: no ground truth between them
    _mech_iteration(run, 1, {
        "b0": _pair("y1", "y1", None, "y1"),
        "b1": _pair("y2", "y1", "y2", None),
        "b2": _pair("y2", "y2", "y1", "y2"),
        "b3": _pair("y1", "y1", "y1", "y2")})
    return run


def test_mechanism_counts_and_tests(audit_run):
    m = collect(audit_run)["mechanism"]
    assert m["training"] == "current" and m["pairs"] == {"all": 7, "kept": 6}
    j = m["judges"]
    assert {k: j["current"]["all"][k] for k in ("n", "right", "wrong", "none")} == \
        {"n": 7, "right": 5, "wrong": 1, "none": 1}
    assert j["current"]["all"]["p"] == 7 / 64  # P(X >= 5), X ~ Bin(6, 1/2)
    assert (j["current"]["kept"]["right"], j["current"]["kept"]["wrong"], j["current"]["kept"]["none"]) == (5, 1, 0)
    assert (j["none"]["all"]["right"], j["none"]["all"]["wrong"], j["none"]["all"]["none"]) == (4, 2, 1)
    assert j["none"]["all"]["p"] == 22 / 64
    assert (j["none"]["kept"]["right"], j["none"]["kept"]["wrong"], j["none"]["kept"]["none"]) == (3, 2, 1)
    assert {k: j["previous"]["all"][k] for k in ("n", "right", "wrong", "none", "p")} == \
        {"n": 4, "right": 2, "wrong": 1, "none": 1, "p": 0.5}
    s = m["sign"]
    assert {k: s["none"]["all"][k] for k in ("n", "wins", "losses", "p")} == {"n": 7, "wins": 3, "losses": 2, "p": 1.0}
    assert {k: s["none"]["kept"][k] for k in ("n", "wins", "losses", "p")} == \
        {"n": 6, "wins": 3, "losses": 1, "p": 10 / 16}
    assert {k: s["previous"]["all"][k] for k in ("n", "wins", "losses", "p")} == \
        {"n": 4, "wins": 1, "losses": 0, "p": 1.0}


def test_mechanism_line_and_table(audit_run):
    text = write_report(audit_run).read_text()
    assert ("**Mechanism** (audit judges, not used for training): on the 7 judged pairs with exactly one right "
            "answer, the training judge (the judge reading c_t) picked the right one 5 times (71%; 1 wrong, "
            "1 no pick; one-sided binomial p = 0.11); the judge without context 4 times (57%; 2 wrong, 1 no pick; "
            "one-sided binomial p = 0.34); the judge reading c_{t-1} 2 times of 4 (50%; 1 wrong, 1 no pick; "
            "one-sided binomial p = 0.5); sign test c_t vs none: 3 wins, 2 losses, p = 1; sign test c_t vs "
            "c_{t-1}: 1 wins, 0 losses, p = 1. On the 6 kept pairs alone:") in text
    assert "## Mechanism audit" in text
    assert "| the judge reading c_t (training) | all | 7 | 5 | 1 | 1 | 71% | 0.11 |" in text
    assert "| the judge reading c_t vs the judge without context | kept | 6 | 3 | 1 | 0.62 |" in text
    lines = text.splitlines()
    evidence_or_judge = max(i for i, s in enumerate(lines) if s.startswith("- **Judge**"))
    assert lines[evidence_or_judge + 1].startswith("- **Mechanism**")
    concl = conclusions(collect(audit_run))
    assert concl["mechanism"]["none"] == {"wins": 3, "losses": 2, "p": 1.0}


def test_runs_without_audit_report_as_before(audit_run):
    for it in ("iter_00", "iter_01"):
        path = audit_run / it / "judgments.jsonl"
        rows = [json.loads(s) for s in path.read_text().splitlines()]
        _jsonl(path, [{k: v for k, v in r.items() if k not in ("audit", "context", "pick")} for r in rows])
    data = collect(audit_run)
    assert data["mechanism"] == {} and all("mechanism" not in r for r in data["iterations"])
    text = write_report(audit_run).read_text()
    assert "**Mechanism**" not in text and "## Mechanism audit" not in text
    assert "**Judge**: kept 7 of 8 judged pairs" in text


def test_mechanism_per_question_type_and_the_gated_type_line(audit_run):
    m = collect(audit_run)["mechanism"]
    # every pair of the fixture is a colour question: the type's scope repeats "all"
    assert m["judges"]["current"]["type:color"] == m["judges"]["current"]["all"]
    assert m["sign"]["none"]["type:color"] == m["sign"]["none"]["all"]
    text = write_report(audit_run).read_text()
    assert "| the judge reading c_t (training) | color only | 7 | 5 | 1 | 1 | 71% | 0.11 |" in text
    assert "the gated type" not in text
    (audit_run / "config.yaml").write_text("iterations: 2\ngate:\n  question_type: color\n")
    text = write_report(audit_run).read_text()
    assert ("On the 7 color pairs alone (the gated type): c_t right 5/7, none right 4/7, c_{t-1} right 2/4; "
            "sign test vs none: 3 wins, 2 losses, p = 1") in text
