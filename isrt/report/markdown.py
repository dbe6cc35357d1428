"""The report's text: `render_markdown(data, concl)` lays out report.md from the numbers
`collect` read and the sentences `conclusions` wrote (tables per policy, paired accuracy per
question type, answer spread, mechanism audit, dropped pairs, wall time, plots, problems,
definitions).
"""
from __future__ import annotations

from pathlib import Path

from isrt.report.conclusions import JUDGE_NAMES, LENGTH_GROWTH_LIMIT, _p, _pct, spread_series
from isrt.report.plots import PANELS

DROP_REASONS = ("tie", "disagreement", "unparseable", "identical", "unbalanced")


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def _frac(row: dict, key: str, n_key: str) -> str:
    if row.get(key) is None:
        return "-"
    n = row.get(n_key)
    return f"{_pct(row[key])} (n={n})" if n is not None else _pct(row[key])


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _head(data: dict, done: list[dict]) -> list[str]:
    """Title and the run's facts (preset, iterations finished, model, judge mode)."""
    cfg, rows = data["config"], data["iterations"]
    model = cfg.get("model") or {}
    judge = cfg.get("judge") or {}
    head = [f"# i-SRT run report: {Path(data['run_dir']).name}", ""]
    facts = [f"run directory `{data['run_dir']}`"]
    if cfg.get("preset"):
        facts.append(f"preset `{cfg['preset']}`")
    facts.append(f"{len(done)} of {data['planned'] if data['planned'] is not None else '?'} iterations finished"
                 + (f" ({len(rows) - len(done)} partial)" if len(rows) > len(done) else ""))
    if model:
        facts.append(f"model `{model.get('source')}` ({model.get('family')})")
    if judge:
        facts.append(f"judge mode `{judge.get('mode')}`")
    head += ["; ".join(facts) + ".", ""]
    if not rows:
        head += ["No iteration has started yet (no iter_XX folder).", ""]
    return head


def _columns(data: dict) -> dict:
    """Which optional columns the per-policy table has."""
    rows = data["iterations"]
    return {"tokens": any(r.get("tokens_mean") is not None for r in rows),
            "greedy": any(r.get("greedy_n") for r in rows) or bool(data["final"].get("greedy_n")),
            "judge": any(r.get("judge_n") for r in rows) or bool(data["final"].get("judge_n")),
            "context": any(r.get("context_n") for r in rows)}


def _policy_line(r: dict, has: dict) -> list[str]:
    """One pi_t row of the per-policy table."""
    line = [f"pi_{r['t']}", _f(r.get("prompts")), _frac(r, "sampled_acc", "sampled_n")]
    if has["context"]:
        line.append(_frac(r, "context_acc", "context_n"))
    if has["greedy"]:
        line.append(_frac(r, "greedy_acc", "greedy_n"))
    if has["judge"]:
        line.append(f"{_pct(r['judge_acc'])} / {_f(r['judge_score'], 2)}" if r.get("judge_n") else "-")
    line += [_f(r.get("words_mean"), 2), _f(r.get("words_median"), 1)]
    if has["tokens"]:
        line += [_f(r.get("tokens_mean"), 2), _f(r.get("tokens_median"), 1)]
    kj = f"{r['kept']} / {r['judged']}" if r.get("judged") is not None else "-"
    if r.get("dpo_steps") == 0:
        loss = "no pairs: no training"
    elif r.get("dpo_loss") is not None:
        loss = f"{_f(r.get('dpo_first_loss'), 4)} -> {_f(r['dpo_loss'], 4)}"
    else:
        loss = "-"
    line += [_frac(r, "swap_agreement", "swap_n"), _frac(r, "gt_agreement", "gt_n"),
             _frac(r, "verdict_gt_agreement", "verdict_gt_n"), kj, loss, _f(r.get("dpo_margin"), 4),
             _f(r.get("dpo_acc"), 3)]
    return line


def _policy_table(data: dict, has: dict) -> list[str]:
    """The "Per policy" section: one row per pi_t, and pi_T (final) when final_eval.jsonl exists."""
    rows = data["iterations"]
    header = ["policy", "prompts", "sampled acc"] + (["c_t names answer"] if has["context"] else []) \
        + (["greedy acc"] if has["greedy"] else []) \
        + (["LLM-judge acc / score"] if has["judge"] else []) + ["words mean", "words median"] \
        + (["tokens mean", "tokens median"] if has["tokens"] else []) \
        + ["swap agree", "GT agree (kept)", "GT agree (verdicts)", "kept / judged", "DPO loss (first -> last)",
           "reward margin", "reward acc"]
    table = [_policy_line(r, has) for r in rows]
    if data["final"]:
        f = data["final"]
        t = data["planned"] if data["planned"] is not None else len(rows)
        line = [f"pi_{t} (final)", "-", "-"] + (["-"] if has["context"] else []) \
            + ([_frac(f, "greedy_acc", "greedy_n")] if has["greedy"] else [])
        if has["judge"]:
            line.append(f"{_pct(f['judge_acc'])} / {_f(f['judge_score'], 2)}" if f.get("judge_n") else "-")
        line += ["-"] * (len(header) - len(line))
        table.append(line)
    out = ["## Per policy", "", "Row pi_t: iteration t's stage-1 samples, judge and DPO (which makes pi_{t+1}).", ""]
    return out + [_table(header, table) if table else "(no rows)", ""]


def _spread_section(data: dict) -> list[str]:
    """The "Answer spread" section, when any policy has greedy answers of a closed kind."""
    series, has_final = spread_series(data), bool(data["final"].get("spread"))
    spread_rows = [(f"pi_{t}" + (" (final)" if has_final and k == len(series) - 1 else ""), sp)
                   for k, (t, sp) in enumerate(series)]
    kinds = sorted({k for _, sp in spread_rows for k in sp})
    if not kinds:
        return []
    out = ["## Answer spread (greedy answers, one-word gold answers of a closed kind)", "",
           "Per kind: accuracy; the most frequent answer and its share; in brackets the most frequent gold "
           "answer's share.", ""]
    cells = [[name] + [f"{_pct(sp[k]['accuracy'], 0)}; {sp[k]['top'] or '-'} {_pct(sp[k]['top_share'], 0)} "
                       f"({_pct(sp[k]['gold_top_share'], 0)}, n={sp[k]['n']})" if k in sp else "-" for k in kinds]
             for name, sp in spread_rows]
    return out + [_table(["policy"] + kinds, cells), ""]


def _paired_section(paired: dict) -> list[str]:
    """The "Paired accuracy" section: per question type, the first and the last policy on the
    same questions (`stats.paired_counts`)."""
    if not paired or not paired["overall"]["n"]:
        return []
    t0, t1, greedy = paired["before"], paired["after"], paired["kind"] == "greedy"
    moved = ["right->wrong", "wrong->right"] if greedy else ["fewer right samples", "more right samples"]
    header = ["type", "n", f"pi_{t0} acc", f"pi_{t1} acc"] + moved + ["McNemar p"]
    rows = [[name, str(r["n"]), _pct(r["acc_before"]), _pct(r["acc_after"]), str(r["b"]), str(r["c"]), _p(r["p"])]
            for name, r in list(paired["by_type"].items()) + [("all", paired["overall"])]]
    return [f"## Paired accuracy ({paired['kind']} answers, pi_{t0} vs pi_{t1}, same questions)", "",
            "n: questions both policies answered (ids with a short gold answer); a question counts once in "
            f"{moved[0]} or {moved[1]}; exact two-sided McNemar test on those two counts.", "",
            _table(header, rows), ""]


def _scope(scope: str) -> str:
    """"all", "kept", or "count only" for "type:count"."""
    return f"{scope[5:]} only" if scope.startswith("type:") else scope


def _mechanism_section(mech: dict) -> list[str]:
    """The "Mechanism audit" section: each judge on the pairs with exactly one right response
    (all judged, and kept only), and the sign tests of the training judge against the others."""
    if not mech or not mech["pairs"]["all"]:
        return []
    train = mech["training"]
    kinds = [train] + [k for k in mech["judges"] if k != train]
    scopes = ["all", "kept"] + sorted({s for v in mech["judges"].values() for s in v if s.startswith("type:")})
    rows = []
    for k in kinds:
        for scope in scopes:
            v = mech["judges"].get(k, {}).get(scope)
            if v and v["n"]:
                rows.append([JUDGE_NAMES.get(k, k) + (" (training)" if k == train else ""), _scope(scope), str(v["n"]),
                             str(v["right"]), str(v["wrong"]), str(v["none"]), _pct(v["right"] / v["n"], 0),
                             _p(v["p"])])
    signs = [[f"{JUDGE_NAMES.get(train, train)} vs {JUDGE_NAMES.get(k, k)}", _scope(scope), str(v[scope]["n"]),
              str(v[scope]["wins"]), str(v[scope]["losses"]), _p(v[scope]["p"])]
             for k, v in mech["sign"].items() for scope in scopes if v.get(scope, {}).get("n")]
    out = ["## Mechanism audit (pairs with exactly one right response)", "",
           "pick: the response a judge preferred in both orders; audit judges judge the same pairs and are never "
           "used for training. binomial p: one-sided, right picks vs wrong picks (H0: 50%).", "",
           _table(["judge", "pairs", "n", "right", "wrong", "no pick", "right share", "binomial p"], rows), ""]
    if signs:
        out += ["Sign test: a win is a pair the training judge got right and the other judge did not; ties dropped; "
                "exact two-sided.", "", _table(["comparison", "pairs", "n", "wins", "losses", "p"], signs), ""]
    return out


def _drops_and_times(rows: list[dict]) -> list[str]:
    """The "Dropped pairs by reason" and "Wall time per stage" sections."""
    reasons = list(DROP_REASONS) + sorted({k for r in rows for k in (r.get("dropped") or {})} - set(DROP_REASONS))
    drop_rows = [[f"iter_{r['t']:02d}", _f(r.get("judged")), _f(r.get("kept"))]
                 + [str((r.get("dropped") or {}).get(k, 0)) for k in reasons]
                 for r in rows if r.get("judged") is not None]
    out = ["## Dropped pairs by reason", ""]
    out += [_table(["iteration", "judged", "kept"] + reasons, drop_rows) if drop_rows else "(no judged pairs yet)", ""]
    time_rows = []
    for r in rows:
        secs = r.get("seconds") or {}
        vals = [secs.get(str(n)) for n in (1, 2, 3)]
        total = sum(v for v in vals if isinstance(v, (int, float)))
        time_rows.append([f"iter_{r['t']:02d}"] + [_f(v, 2) if v is not None else "-" for v in vals]
                         + [_f(total, 2) if any(v is not None for v in vals) else "-"])
    out += ["## Wall time per stage (seconds)", ""]
    return out + [_table(["iteration", "stage 1", "stage 2", "stage 3", "total"], time_rows) if time_rows else "(none)",
                  ""]


def _problems(data: dict, done: list[dict]) -> list[str]:
    """The "Problems and gaps" section: unfinished stages and iterations, unreadable lines."""
    status = []
    for r in data["iterations"]:
        if r.get("missing_stages"):
            status.append(f"{r['dir']}: stage(s) {', '.join(map(str, r['missing_stages']))} not finished")
    if data["planned"] is not None and len(done) < data["planned"]:
        status.append(f"{len(done)} of {data['planned']} planned iterations finished")
    if status or data["problems"]:
        return ["## Problems and gaps", ""] + [f"- {s}" for s in status + data["problems"]] + [""]
    return []


def _definitions(has_context: bool) -> list[str]:
    context_definition = [
        "- **c_t names answer**: of the prompts whose gold caption is in the synthetic data's wording, the share "
        "whose context c_t (the judge's evidence) gives the gold answer when read the same way "
        "(`isrt.engine.synthetic.answer_from_caption`; a missing object counts as not named)."]
    return ["## Definitions", "",
            "- **sampled acc**: both stage-1 responses of each prompt whose ground truth has at most 3 words, scored "
            "by exact/keyword match (`isrt.scoring.score_answer`); **greedy acc**: the same for `eval.jsonl` "
            "predictions of pi_t (`final_eval.jsonl`: pi_T).",
            *(context_definition if has_context else []),
            "- **LLM-judge acc / score**: share of eval records the judge scored >= 3, and the mean score (1-5).",
            "- **words**: whitespace words of the stage-1 responses; **tokens**: the policy tokenizer's tokens.",
            "- **swap agree**: of the pairs of two different responses with both verdicts (AB, BA) parsed, the share "
            "naming the same response (a greedy `likelihood` judge has no position: only ties fall outside it).",
            "- **GT agree (kept)**: of the kept pairs with exactly one correct response, the share whose chosen "
            "response is the correct one; **GT agree (verdicts)**: the same over every parsed single verdict "
            "before the swap filter. 50% is chance.",
            "- **DPO loss**: first step and last-epoch mean; **reward margin / acc**: last-epoch means "
            "(beta-scaled log-ratio margin, share of pairs with chosen reward > rejected).",
            "- **Verdict rule**: the first and the last measured policy are paired on the questions both answered; "
            "accuracy went up beyond noise when the exact McNemar test on right->wrong (b) and wrong->right (c) "
            "questions gives p < 0.05 with c > b (two standard errors of the unpaired difference only when no "
            f"question pairs up); length growth above {int(LENGTH_GROWTH_LIMIT * 100)}% is flagged.",
            "- **Judge / Mechanism p-values**: one-sided exact binomial of right vs wrong picks (H0: 50%); the sign "
            "test between two judges counts the pairs only one of them got right.", ""]


def render_markdown(data: dict, concl: dict) -> str:
    """report.md's text."""
    done = [r for r in data["iterations"] if not r.get("missing_stages")]
    has = _columns(data)
    out = _head(data, done) + ["## Summary", ""] + [f"- {line}" for line in concl["lines"]] + [""]
    out += ["![overview](overview.png)", ""]
    out += _policy_table(data, has)
    out += _paired_section(data.get("paired") or {})
    out += _spread_section(data)
    out += _mechanism_section(data.get("mechanism") or {})
    out += _drops_and_times(data["iterations"])
    out += ["## Plots", ""] + [f"![{name}]({name}.png)" for name in PANELS] + [""]
    out += _problems(data, done)
    out += _definitions(has["context"])
    return "\n".join(out)


__all__ = ["DROP_REASONS", "render_markdown"]
