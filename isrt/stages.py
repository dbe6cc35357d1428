"""The work of stages 1 and 2 on one rank's shard; `isrt.loop` handles files, merging, resume.

Stage 1 (generate): per video, the visual context c_t ~ pi_t(V, c_{t-1}); per prompt, two
sampled responses y1, y2 (re-sampled when identical), or with sampling.candidates = n > 2 the
pair `pick_pair` takes from n samples by the likelihood judge's scores.
Stage 2 (judge): each pair judged in both A/B orders with c_t in the prompt (score, generate), or
scored by each response's likelihood given the video, c_t and the question (likelihood); kept
pairs get reference log-probs under pi_t through the same kernel path as training.
"""
from __future__ import annotations

import random

import torch
from tqdm import tqdm

from isrt import judge, prompts, verdicts
from isrt.data import usable_records
from isrt.engine.generation import choice_logprobs, generate
from isrt.engine.training.logprobs import sequence_logps
from isrt.engine.training.shared_prefix import pair_logps


def stable_seed(*parts) -> int:
    """A stable per-call seed (Python's hash() of str is salted per process)."""
    h = 0
    for p in parts:
        for ch in str(p):
            h = (h * 1000003 + ord(ch)) % (2**31 - 1)
        h = (h * 7919 + 17) % (2**31 - 1)
    return h


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield i // size, items[i:i + size]


def load_features(adapter, cache, records: list[dict], *, show: bool, room: int = 0) -> tuple[list[dict], list[str]]:
    """Encode each video once; records whose video fails to decode, or whose prompt leaves less
    than `room` tokens of the context, are returned as bad."""
    bad: list[str] = []
    return usable_records(adapter, cache, records, bad=bad, show=show, room=room), bad


def generate_contexts(adapter, cache, videos: list[str], previous: dict[str, str | None], cfg, *,
                      seed_key, show: bool, names: dict[str, str] | None = None) -> dict[str, str]:
    """c_t for each video, conditioned on its c_{t-1} (None: the first-context prompt). Sampled
    per video (seed_key and the video's pool name, `names`, else its path), so c_t does not
    depend on the batch or the rank a video falls into."""
    s = cfg.sampling
    temperature = s.temperature if s.context_temperature is None else s.context_temperature
    names = names or {}
    out = {}
    for _, chunk in _batches(videos, s.batch_size):
        texts = generate(adapter, [adapter.chat_prompt(prompts.context_prompt(previous.get(v))) for v in chunk],
                         [cache.get(adapter, v) for v in chunk], max_new_tokens=s.context_max_new_tokens,
                         do_sample=temperature > 0, temperature=temperature or 1.0, top_p=s.top_p, num_return_sequences=1,
                         seeds=[stable_seed(seed_key, "context", names.get(v, v)) for v in chunk],
                         batch_size=s.batch_size)
        out.update({v: t[0].strip() for v, t in zip(chunk, texts)})
    return out


def generate_responses(adapter, cache, records: list[dict], cfg, *, seed_key, show: bool) -> dict[str, list[str]]:
    """`sampling.candidates` sampled responses per prompt id (2: the pair y1, y2); a prompt whose
    samples all agree is re-sampled up to `sampling.resample_identical` times. Sampled per record
    (seed_key, attempt and the prompt id), so they do not depend on the batch or the rank."""
    s = cfg.sampling
    samples: dict[str, list[str]] = {}
    todo = records
    for attempt in range(1 + s.resample_identical):
        bar = tqdm(total=len(todo), desc="stage 1 responses", unit="prompt", disable=not show, leave=False)
        for _, chunk in _batches(todo, s.batch_size):
            texts = generate(adapter, [prompts.policy_prompt(adapter, r["prompt"]) for r in chunk],
                             [cache.get(adapter, r["video_path"]) for r in chunk], max_new_tokens=s.max_new_tokens,
                             do_sample=True, temperature=s.temperature, top_p=s.top_p,
                             num_return_sequences=s.candidates,
                             seeds=[stable_seed(seed_key, "responses", attempt, r["id"]) for r in chunk],
                             batch_size=s.batch_size)
            samples.update({r["id"]: [y.strip() for y in t] for r, t in zip(chunk, texts)})
            bar.update(len(chunk))
        bar.close()
        todo = [r for r in todo if len(set(samples[r["id"]])) == 1]
        if not todo:
            break
    return samples


def pick_pair(candidates: list[str], scores: dict[str, float]) -> list[str]:
    """Best of n: [y1, y2] from a prompt's sampled `candidates`, given the judge's score of each
    distinct one (log pi_t(y | video, evidence, question)). The pair is the judge's best candidate
    and the policy's most frequent other candidate (the earlier sampled on a tie of either), in
    the order they were first sampled; [y, y] when all candidates agree (an identical pair).

    Why the most frequent other and not the judge's worst (Self-Rewarding LMs' max/min): a
    summed log-prob scores a rare multi-word sample lowest under any evidence, so min would pair
    the best answer with junk; the policy's usual answer is the one DPO should move away from when
    the judge prefers another, and the one it reinforces when the judge agrees (then against the
    runner-up).
    """
    order = list(dict.fromkeys(candidates))
    if len(order) == 1:
        return [order[0], order[0]]
    best = max(order, key=lambda y: (scores[y], -order.index(y)))
    other = max((y for y in order if y != best), key=lambda y: (candidates.count(y), -order.index(y)))
    return sorted((best, other), key=order.index)


@torch.no_grad()
def candidate_scores(adapter, cache, records: list[dict], samples: dict[str, list[str]], cfg) -> dict[str, dict]:
    """{prompt id: {candidate: score}}: the training judge's likelihood score of each distinct
    candidate (context kind cfg.judge.context, minus the no-context score with judge.contrast; the
    record has prompt, video_path, context, previous_context), the score `_likelihood_verdicts`
    compares."""
    jobs = [(r, y) for r in records for y in dict.fromkeys(samples[r["id"]])]
    out: dict[str, dict] = {r["id"]: {} for r in records}
    adapter.model.eval()
    for _, chunk in _batches(jobs, cfg.sampling.batch_size):
        scores = _answer_scores(adapter, [cache.get(adapter, r["video_path"]) for r, _ in chunk], [r for r, _ in chunk],
                                [y for _, y in chunk], cfg.judge.context, cfg)
        for (r, y), v in zip(chunk, scores):
            out[r["id"]][y] = v
    return out


def _answer_scores(adapter, feats: list, records: list[dict], texts: list[str], kind: str, cfg,
                   baselines: list[list[tuple]] | None = None) -> list[float]:
    """The likelihood judge's score of texts[i] as the answer to records[i]: log pi_t(y | video,
    judge_answer prompt with the context `kind` and the question), all in one `sequence_logps`
    batch; with judge.contrast (and a context to contrast), minus the same without a context;
    with `baselines` (judge.calibrate: per i, K (features, record) of other videos), minus the
    mean of the same score with each other video and its context in place of records[i]'s."""
    def logps(fs, evidence_of, k):
        chat = [adapter.chat_prompt(prompts.judge_answer_prompt(r["prompt"], evidence(e, k)))
                for r, e in zip(records, evidence_of)]
        return sequence_logps(adapter, chat, texts, fs, backend=cfg.dpo.backend).tolist()
    scores = logps(feats, records, kind)
    if cfg.judge.contrast and kind != "none":  # what the context adds to each answer's log-prob
        scores = [a - b for a, b in zip(scores, logps(feats, records, "none"))]
    for k in range(len(baselines[0]) if baselines else 0):
        base = logps([b[k][0] for b in baselines], [b[k][1] for b in baselines], kind)
        scores = [a - b / len(baselines[0]) for a, b in zip(scores, base)]
    return scores


def other_videos(pool: list[dict], k: int, seed_key) -> dict[str, list[dict]]:
    """{record id: k records of `pool` about other videos} for judge.calibrate: one record per
    video (its first by id), drawn per record with a seed of (seed_key, id), so the draw does not
    depend on how the pool is sharded; k is capped at the number of other videos."""
    by_video: dict[str, dict] = {}
    for r in sorted(pool, key=lambda r: r["id"]):
        by_video.setdefault(r["video_path"], r)
    videos = sorted(by_video)
    k = min(k, len(videos) - 1)
    out = {}
    for r in pool:
        others = [v for v in videos if v != r["video_path"]]
        pick = random.Random(stable_seed(seed_key, r["id"], "calibrate")).sample(others, k)
        out[r["id"]] = [by_video[v] for v in pick]
    return out


def _uniform(*key) -> float:
    return random.Random(stable_seed(*key)).random()


CONTEXT_KINDS = ("current", "previous", "none")


def evidence(rec: dict, kind: str) -> str | None:
    """What a judge of context `kind` reads about the video: c_t, c_{t-1} (None at t = 0), or nothing."""
    return {"current": rec.get("context"), "previous": rec.get("previous_context"), "none": None}[kind]


def judge_pairs(adapter, cache, records: list[dict], cfg, *, seed_key, show: bool,
                pool: list[dict] | None = None) -> list[dict]:
    """One judgment per record (record has prompt, context, previous_context, responses=[y1, y2]):
    {id, verdicts, kept, reason, raw_verdicts, judge_outputs, context, pick, audit}. The verdicts
    read the context kind cfg.judge.context; with cfg.judge.audit, "audit" holds the other kinds'
    verdicts on the same pair ({kind: {verdicts, raw_verdicts, pick} or None where there is no
    c_{t-1}}), judged after and seeded apart, so the training verdicts are the same with or
    without it. `pool`: the records judge.calibrate draws other videos from (all ranks' records,
    so a pair's draw is the same on every world size; default: `records`)."""
    kind = cfg.judge.context
    others = None
    if cfg.judge.calibrate:
        others = other_videos(pool or records, cfg.judge.calibrate, (seed_key, "calibrate"))
    judgments = _decide_all(records, *_verdicts(adapter, cache, records, cfg, kind, seed_key=seed_key, show=show,
                                                others=others), kind)
    if not cfg.judge.audit:
        return judgments
    for j in judgments:
        j["audit"] = {}
    for other in (k for k in CONTEXT_KINDS if k != kind):
        todo = [i for i, r in enumerate(records) if other != "previous" or r.get("previous_context") is not None]
        got = _decide_all([records[i] for i in todo], *_verdicts(
            adapter, cache, [records[i] for i in todo], cfg, other, seed_key=(seed_key, "audit", other), show=show,
            others=others), other) if todo else []
        for i in range(len(records)):
            judgments[i]["audit"][other] = None
        for i, g in zip(todo, got):
            judgments[i]["audit"][other] = {k: g[k] for k in ("verdicts", "raw_verdicts", "pick")}
    return judgments


def _verdicts(adapter, cache, records: list[dict], cfg, kind: str, *, seed_key, show: bool,
              others: dict | None = None) -> tuple[dict, dict]:
    """(raw verdict, judge output) per (record index, order), the judge reading context `kind`;
    `others`: judge.calibrate's other videos per record id (`other_videos`)."""
    j, s = cfg.judge, cfg.sampling
    if j.mode == "likelihood":
        return _likelihood_verdicts(adapter, cache, records, cfg, kind, seed_key=seed_key, show=show, others=others)
    jobs = []  # (record index, order, prompt)
    for i, rec in enumerate(records):
        y1, y2 = rec["responses"]
        for order in judge.ORDERS:
            a, b = (y1, y2) if order == "AB" else (y2, y1)
            jobs.append((i, order, adapter.chat_prompt(prompts.judge_prompt(rec["prompt"], evidence(rec, kind), a, b))))
    raw: dict[tuple[int, str], str | None] = {}
    outputs: dict[tuple[int, str], str] = {}
    bar = tqdm(total=len(jobs), desc="stage 2 judge", unit="verdict", disable=not show, leave=False)
    for _, chunk in _batches(jobs, s.batch_size):
        feats = [cache.get(adapter, records[i]["video_path"]) for i, _, _ in chunk]
        if j.mode == "score":
            lp = choice_logprobs(adapter, [p + prompts.VERDICT_PREFIX for _, _, p in chunk], feats,
                                 list(prompts.VERDICT_CHOICES))
            for (i, order, _), (la, lb) in zip(chunk, lp.tolist()):
                raw[i, order] = judge.score_verdict(la, lb, j.tie_margin, temperature=j.temperature,
                                                    u=_uniform(seed_key, records[i]["id"], order))
                outputs[i, order] = f"logp(A)={la:.4f} logp(B)={lb:.4f}"
        else:
            texts = generate(adapter, [p for _, _, p in chunk], feats, max_new_tokens=j.max_new_tokens,
                             do_sample=j.temperature > 0, temperature=j.temperature or 1.0, top_p=1.0,
                             num_return_sequences=1, batch_size=s.batch_size,
                             # per (seed, iteration, pair, order): verdicts do not depend on the world size
                             seeds=[stable_seed(seed_key, records[i]["id"], order) for i, order, _ in chunk])
            for (i, order, _), t in zip(chunk, texts):
                raw[i, order] = verdicts.parse_verdict(t[0])
                outputs[i, order] = t[0]
        bar.update(len(chunk))
    bar.close()
    return raw, outputs


@torch.no_grad()
def _likelihood_verdicts(adapter, cache, records: list[dict], cfg, kind: str, *, seed_key, show: bool,
                         others: dict | None = None):
    """Likelihood mode: s_k = log pi_t(y_k | video, judge_answer prompt with c_t and the question),
    one forward per response (with judge.contrast, minus the same without a context; with
    `others`, judge.calibrate, minus its mean over the other videos); the verdict in each order
    names the higher-scoring response (a tie within tie_margin; sampled with
    p(A) = sigmoid((s_A - s_B) / temperature) when temperature > 0)."""
    j = cfg.judge
    contrast = j.contrast and kind != "none"  # the no-context judge has nothing to contrast with
    raw: dict[tuple[int, str], str | None] = {}
    outputs: dict[tuple[int, str], str] = {}
    bar = tqdm(total=len(records), desc="stage 2 judge", unit="pair", disable=not show, leave=False)
    for _, chunk in _batches(list(enumerate(records)), cfg.sampling.batch_size):
        recs = [r for _, r in chunk]
        feats = [cache.get(adapter, r["video_path"]) for r in recs]
        base = None
        if others is not None:  # the same other videos for both responses of a pair
            base = [[(cache.get(adapter, o["video_path"]), o) for o in others[r["id"]]] for r in recs] * 2
        # both halves in one batch: (score of y1, score of y2) per pair
        lp = _answer_scores(adapter, feats * 2, recs * 2, [r["responses"][0] for r in recs]
                            + [r["responses"][1] for r in recs], kind, cfg, base)
        scores = list(zip(lp[:len(recs)], lp[len(recs):]))
        name = "pmi" if contrast else "cal" if others is not None else "logp"
        for (i, rec), (s1, s2) in zip(chunk, scores):
            for order in judge.ORDERS:
                sa, sb = (s1, s2) if order == "AB" else (s2, s1)
                raw[i, order] = judge.score_verdict(sa, sb, j.tie_margin, temperature=j.temperature,
                                                    u=_uniform(seed_key, rec["id"], order))
                outputs[i, order] = f"{name}(A)={sa:.4f} {name}(B)={sb:.4f}"
        bar.update(len(chunk))
    bar.close()
    return raw, outputs


def _decide_all(records: list[dict], raw: dict, outputs: dict, kind: str) -> list[dict]:
    judgments = []
    for i, rec in enumerate(records):
        rv = [raw[i, o] for o in judge.ORDERS]
        verdicts, kept, reason = judge.decide(*rec["responses"], rv)
        pick = verdicts[0] if verdicts[0] == verdicts[1] and verdicts[0] in ("y1", "y2") else None
        judgments.append({"id": rec["id"], "verdicts": verdicts, "kept": kept, "reason": reason,
                          "raw_verdicts": rv, "judge_outputs": [outputs[i, o] for o in judge.ORDERS],
                          "context": kind, "pick": pick})
    return judgments


@torch.no_grad()
def reference_logps(adapter, cache, prefs: list[dict], cfg) -> None:
    """Fill ref_chosen_logp / ref_rejected_logp in place: pi_t's summed log-probs of each
    response, through the same path that training uses (`sequence_logps`, or one shared-prefix
    row per pair with dpo.shared_prefix)."""
    adapter.model.eval()
    for _, chunk in _batches(prefs, cfg.dpo.batch_size):
        chat = [prompts.policy_prompt(adapter, p["prompt"]) for p in chunk]
        feats = [cache.get(adapter, p["video_path"]) for p in chunk]
        scores = _pair_logps(adapter, chat, feats, [p["chosen"] for p in chunk], [p["rejected"] for p in chunk],
                             cfg.dpo.backend, max_length=cfg.dpo.max_length or None,
                             shared_prefix=cfg.dpo.shared_prefix)
        for p, (chosen, rejected) in zip(chunk, scores):
            p["ref_chosen_logp"], p["ref_rejected_logp"] = chosen, rejected


def _pair_logps(adapter, chat: list[str], feats: list, first: list[str], second: list[str],
                backend: str, max_length: int | None = None, shared_prefix: bool = False) -> list[tuple[float, float]]:
    """(log p(first_b), log p(second_b)) per prompt b, both halves in one `sequence_logps` batch
    (shared_prefix: one row [prompt | first | second] per prompt, `shared_prefix.pair_logps`)."""
    if shared_prefix:
        a, b = pair_logps(adapter, chat, first, second, feats, backend=backend, max_length=max_length)
        return list(zip(a.tolist(), b.tolist()))
    lp = sequence_logps(adapter, chat * 2, first + second, feats * 2, backend=backend,
                        max_length=max_length).tolist()
    return list(zip(lp[:len(chat)], lp[len(chat):]))
