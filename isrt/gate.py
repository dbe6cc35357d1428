"""The demo's gate (issue 14): before the loop, does pi_0 show the failure i-SRT corrects?

i-SRT can only correct answers with a judge whose evidence, the description c_t, is better than
the answers it judges. So on held-out clips, for the questions of one type (the demo's planted
prior: `warmstart.qa_prior`), the gate compares pi_0's greedy answers with what its greedy
first description c_0 says (`isrt.scoring.description_names_answer`), question by question:

    b = questions the description gets right and the answer wrong
    c = questions the answer gets right and the description wrong
    passed  <=>  acc(description) - acc(answer) >= margin   and   P(Binomial(b + c, 1/2) >= b) < alpha

(the one-sided exact McNemar test of "the description is the better view"; margin: the gap the
judge needs besides significance, since it reads c_t imperfectly). Same greedy calls as
`python -m isrt.eval --describe`, on the same prompts, so the two agree.
"""
from __future__ import annotations

from collections import Counter


def run_gate(adapter, cache, records: list[dict], *, question_type: str, questions: int, margin: float,
             alpha: float, batch_size: int, max_new_tokens: int, describe_max_new_tokens: int) -> dict:
    """The gate's numbers on the first `questions` records of `question_type` (records as
    `isrt.data.load_pool` returns them, with "video_path"). Returns a JSON-able dict with
    "passed" and the counts behind it."""
    from isrt.eval.answers import greedy_answers, greedy_descriptions
    from isrt.report.stats import sign_test_one_sided
    from isrt.scoring import description_names_answer, score_answer
    from isrt.warmstart import question_type as type_of

    chosen = [r for r in records if type_of(r["prompt"]) == question_type][:questions]
    answered = greedy_answers(adapter, cache, chosen, batch_size=batch_size, max_new_tokens=max_new_tokens)
    path_of = {r["id"]: r["video_path"] for r in chosen}
    described = greedy_descriptions(adapter, cache, list(dict.fromkeys(path_of[r["id"]] for r in answered)),
                                    batch_size=batch_size, max_new_tokens=describe_max_new_tokens)
    answer_ok = [bool(score_answer(r["prediction"], r["answer"])) for r in answered]
    described_ok = [bool(description_names_answer(r, described[path_of[r["id"]]])) for r in answered]
    n = len(answered)
    b = sum(d and not a for a, d in zip(answer_ok, described_ok))
    c = sum(a and not d for a, d in zip(answer_ok, described_ok))
    acc_a, acc_d = (sum(answer_ok) / n, sum(described_ok) / n) if n else (0.0, 0.0)
    p = sign_test_one_sided(b, c) if b + c else 1.0
    return dict(question_type=question_type, n=n, answers_right=sum(answer_ok), descriptions_right=sum(described_ok),
                answer_accuracy=acc_a, description_accuracy=acc_d, gap=acc_d - acc_a, b=b, c=c, p=p,
                margin=margin, alpha=alpha, passed=bool(n and acc_d - acc_a >= margin and p < alpha),
                answers=dict(Counter(r["prediction"].strip().lower() for r in answered).most_common(5)))


def gate_line(g: dict) -> str:
    """One line for the log and the report."""
    verdict = "passed" if g["passed"] else "FAILED"
    return (f"gate {verdict} on {g['n']} held-out {g['question_type']} questions: pi_0's descriptions name the "
            f"answer for {g['description_accuracy']:.1%}, its answers get {g['answer_accuracy']:.1%} right "
            f"(gap {g['gap']:+.1%}, needed >= {g['margin']:.0%}; description right and answer wrong on {g['b']}, "
            f"the reverse on {g['c']}, one-sided McNemar p = {g['p']:.2g}, needed < {g['alpha']:g})")


__all__ = ["gate_line", "run_gate"]
