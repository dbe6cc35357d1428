"""Batched generation and next-token scoring from cached video features."""
from __future__ import annotations

import pytest
import torch

from isrt.engine.adapters import load_adapter
from isrt.engine.generation import choice_logprobs, generate, prompt_batch
from random_videos import random_videos

F = 4

QUESTIONS = [
    "What colour is the ball?",
    "Describe this video in detail: every object, its colour and shape, how many objects there are, "
    "and which way each one moves.",
    "How many?",
]


@pytest.fixture(scope="module")
def adapter():
    return load_adapter("video_llava", "tiny", num_frames=F, seed=0)


@pytest.fixture(scope="module")
def videos(adapter):
    """(pixels [F,3,S,S], features [n_video_tokens, D]) for three different videos."""
    return random_videos(adapter, len(QUESTIONS), seed=0, height=36, width=44)


@pytest.fixture()
def tower_calls(adapter):
    """Counts forward calls of the video tower (the expensive, frozen part)."""
    calls = []
    h = adapter.model.model.video_tower.register_forward_hook(lambda *a: calls.append(1))
    yield calls
    h.remove()


def test_left_padding_puts_prompts_at_the_end(adapter, videos):
    prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
    b = prompt_batch(adapter, prompts, [f for _, f in videos])
    mask, ids = b["attention_mask"], b["input_ids"]
    lengths = mask.sum(1)
    assert len(set(lengths.tolist())) == 3, "prompts of different lengths"
    assert bool((mask[:, -1] == 1).all()) and bool((ids[mask == 0] == adapter.tokenizer.pad_token_id).all())
    for i in range(3):  # padding strictly on the left
        assert mask[i].tolist() == [0] * (mask.shape[1] - lengths[i]) + [1] * lengths[i]


@pytest.mark.parametrize("family", ["video_llava", "llava_next_video"])
def test_greedy_batched_equals_unbatched_and_hf_pixel_path(family, adapter, videos):
    if family != adapter.family:
        adapter = load_adapter(family, "tiny", num_frames=F, seed=0)
        videos = [(px, adapter.video_features(px)) for px, _ in videos]
    prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
    feats = [f for _, f in videos]
    batched = generate(adapter, prompts, feats, max_new_tokens=10, do_sample=False, batch_size=8)
    single = [generate(adapter, [p], [f], max_new_tokens=10, do_sample=False)[0] for p, f in zip(prompts, feats)]
    assert batched == single
    assert all(len(x) == 1 and x[0] for x in batched)
    # The standard HF path (input_ids + pixel_values_videos, vision tower inside) gives the same tokens.
    for (px, f), p, got in zip(videos, prompts, batched):
        ids = torch.tensor([adapter.encode_prompt(p, f.shape[0])])
        with torch.no_grad():
            seq = adapter.model.generate(input_ids=ids, pixel_values_videos=px[None], max_new_tokens=10,
                                         do_sample=False, pad_token_id=adapter.tokenizer.pad_token_id)
        assert adapter.decode(seq[0, ids.shape[1]:].tolist()) == got[0]


def test_sampling_is_seeded_per_call_and_leaves_global_rng_alone(adapter, videos):
    prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
    feats = [f for _, f in videos]
    kw = dict(max_new_tokens=12, do_sample=True, temperature=1.0, top_p=0.95, num_return_sequences=2)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = generate(adapter, prompts, feats, seed=7, **kw)
    assert torch.equal(torch.random.get_rng_state(), state), "global RNG must be left untouched"
    torch.manual_seed(999)  # a different global state must not matter
    b = generate(adapter, prompts, feats, seed=7, **kw)
    c = generate(adapter, prompts, feats, seed=8, **kw)
    assert a == b
    assert a != c
    assert [len(x) for x in a] == [2, 2, 2]
    assert all(x[0] != x[1] for x in a), "the two samples of a prompt differ"


def test_max_new_tokens_and_eos_cut(adapter, videos):
    p, f = adapter.chat_prompt(QUESTIONS[0]), videos[0][1]
    out = generate(adapter, [p], [f], max_new_tokens=3, do_sample=False)[0][0]
    assert 1 <= len(adapter.tokenizer(out, add_special_tokens=False).input_ids) <= 4
    eos = adapter.tokenizer.eos_token_id
    ids = adapter.tokenizer(" a red ball", add_special_tokens=False).input_ids
    assert adapter.decode(ids + [eos] + ids) == "a red ball"


def test_features_are_reused_not_recomputed(adapter, videos, tower_calls):
    from isrt.engine.training.logprobs import sequence_logps

    prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
    feats = [f for _, f in videos]
    generate(adapter, prompts, feats, max_new_tokens=4, num_return_sequences=2, batch_size=2)
    choice_logprobs(adapter, [p + " Verdict:" for p in prompts], feats, [" A", " B"])
    lp = sequence_logps(adapter, prompts, ["red", "a blue square", "two"], feats)
    lp.sum().backward()
    adapter.model.zero_grad(set_to_none=True)
    assert tower_calls == []
    adapter.video_features(videos[0][0])
    assert tower_calls == [1]  # the hook does count real encodes


def test_choice_logprobs_matches_naive_full_logits(adapter, videos):
    prompts = [adapter.chat_prompt(q) + " Verdict:" for q in QUESTIONS]
    choices = [" A", " B", " red"]
    got = choice_logprobs(adapter, prompts, [f for _, f in videos], choices, batch_size=2)
    assert got.shape == (3, 3) and got.dtype == torch.float32
    tok = adapter.tokenizer
    for i, ((px, f), p) in enumerate(zip(videos, prompts)):
        ids = adapter.encode_prompt(p, f.shape[0])
        with torch.no_grad():
            logits = adapter.model(input_ids=torch.tensor([ids]), pixel_values_videos=px[None]).logits[0, -1]
        logp = torch.log_softmax(logits.double(), -1)
        want = []
        for c in choices:
            first = tok(p + c, add_special_tokens=False).input_ids[len(tok(p, add_special_tokens=False).input_ids)]
            assert first == tok(c, add_special_tokens=False).input_ids[0]  # " A" etc. in context
            want.append(logp[first].item())
        torch.testing.assert_close(got[i].double(), torch.tensor(want, dtype=torch.float64), rtol=0, atol=2e-5)


def test_row_seeded_sampling_does_not_depend_on_batch_mates(adapter, videos):
    prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
    feats = [f for _, f in videos]
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.0, top_p=0.95, num_return_sequences=2)
    together = generate(adapter, prompts, feats, seeds=[11, 12, 13], batch_size=6, **kw)
    alone = [generate(adapter, [p], [f], seeds=[s], **kw)[0] for p, f, s in zip(prompts, feats, (11, 12, 13))]
    reordered = generate(adapter, prompts[::-1], feats[::-1], seeds=[13, 12, 11], batch_size=2, **kw)[::-1]
    assert together == alone == reordered
    assert all(x[0] != x[1] for x in together), "a prompt's two samples differ"
    assert generate(adapter, prompts[:1], feats[:1], seeds=[14], **kw)[0] != together[0]  # another seed


def test_row_seeded_sampler_draws_from_the_softmax():
    from isrt.engine.generation import _RowSeededSampler

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]])
    n = 4000
    picks = torch.tensor([int(_RowSeededSampler([s], torch.device("cpu"))(None, logits).argmax()) for s in range(n)])
    freq = torch.bincount(picks, minlength=5).double() / n
    want = torch.softmax(logits[0].double(), dim=0)
    assert freq[4] == 0  # a filtered token is never drawn
    assert torch.allclose(freq, want, atol=4 * (want * (1 - want) / n).sqrt().max().item())


@pytest.mark.parametrize("family", ["video_llava", "llava_next_video", "llava_onevision", "qwen2_5_vl", "qwen3_vl"])
def test_a_static_cache_and_rounded_prompt_padding_change_no_token(family):
    """sampling.kv_cache=static (what HF compiles the decode step for on CUDA) with prompts
    left-padded to a multiple of 16: greedy, seeded and row-seeded sampling give the tokens of
    the dynamic cache. On the CPU nothing compiles; the cache and the padding are the same."""
    a = load_adapter(family, "tiny", num_frames=F, seed=0)
    prompts = [a.chat_prompt(q) for q in QUESTIONS]
    feats = [f for _, f in random_videos(a, len(QUESTIONS), seed=0, height=36, width=44)]
    runs = [dict(do_sample=False), dict(do_sample=True, temperature=1.0, seed=3, num_return_sequences=2),
            dict(do_sample=True, temperature=1.0, seeds=[5, 6, 7], num_return_sequences=2)]
    want = [generate(a, prompts, feats, max_new_tokens=8, batch_size=3, **kw) for kw in runs]
    a.kv_cache, a.prompt_pad_to = "static", 16
    assert prompt_batch(a, prompts, feats, pad_to=16)["attention_mask"].shape[1] % 16 == 0
    got = [generate(a, prompts, feats, max_new_tokens=8, batch_size=3, **kw) for kw in runs]
    assert got == want
    a.kv_cache = "paged"
    with pytest.raises(ValueError, match="sampling.kv_cache"):
        generate(a, prompts, feats, max_new_tokens=2, do_sample=False)

