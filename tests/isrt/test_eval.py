"""isrt.eval: greedy answers through the engine (tiny model), exact-match scoring, and the
external LLM grader against a fake OpenAI-compatible server on 127.0.0.1 (started here, no other network)."""
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from isrt.eval import (GraderClient, MalformedReply, chat_completions_url, grade_results, grader_messages,
                       greedy_answers, main, parse_grader_reply, summary_path)
from isrt.scoring import description_names_answer


# ---- a fake grader server ----------------------------------------------------------------
class FakeGrader:
    """Replies chosen by the question in the request: "q-yes" -> JSON yes/4, "q-no" -> a Python
    dict no/1, "q-text" -> LLaVA-Hound style "Score: 3", "q-malformed" -> no score, "q-flaky" ->
    HTTP 500 the first time then yes/5, "q-badbody" -> a 200 whose body is not JSON,
    "q-401" -> HTTP 401. Any other question: yes/4."""

    MAX_REQUESTS = 100  # a runaway client fails the test instead of spinning

    def __init__(self):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        self.flaky_seen = False
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.requests.append(body)
                    judge.headers.append(dict(self.headers))
                    n = len(judge.requests)
                    user = body["messages"][-1]["content"]
                    flaky_first = "Question: q-flaky" in user and not judge.flaky_seen
                    if "Question: q-flaky" in user:
                        judge.flaky_seen = True
                if n > judge.MAX_REQUESTS or self.path != "/v1/chat/completions":
                    return self._send(404, b'{"error": "not found"}')
                if flaky_first:
                    return self._send(500, b'{"error": "overloaded"}')
                if "Question: q-401" in user:
                    return self._send(401, b'{"error": {"message": "invalid api key"}}')
                if "Question: q-badbody" in user:
                    return self._send(200, b"<html>gateway</html>")
                content = {"q-no": "{'pred': 'no', 'score': 1}", "q-text": "Explanation: close enough.\nScore: 3",
                           "q-malformed": "The prediction looks fine to me.", "q-flaky": '{"pred": "yes", "score": 5}'}
                text = next((v for k, v in content.items() if f"Question: {k}\n" in user),
                            '{"pred": "yes", "score": 4}')
                reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}]}
                self._send(200, json.dumps(reply).encode())

            def _send(self, code, payload):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def fake_grader():
    j = FakeGrader()
    yield j
    j.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _result(question, answer="red", prediction="red", caption="A red circle."):
    return {"id": question, "prompt": question, "answer": answer, "prediction": prediction, "caption": caption}


# ---- pure parts --------------------------------------------------------------------------
def test_chat_completions_url():
    assert chat_completions_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1/chat/completions"
    assert chat_completions_url("https://h/v1/") == "https://h/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"
    for bad in ("127.0.0.1:8000", "ftp://h/v1", "http://", "", "http://h:99999/v1"):
        with pytest.raises(ValueError, match="--judge_url"):
            chat_completions_url(bad)


@pytest.mark.parametrize("reply, expected", [
    ('{"pred": "yes", "score": 4}', (4.0, "yes")),
    ("{'pred': 'no', 'score': 1}", (1.0, "no")),
    ("Sure! {'pred': 'yes', 'score': 4.8}", (4.8, "yes")),  # Video-ChatGPT's own example is a float
    ('```json\n{"score": "5", "pred": "Yes"}\n```', (5.0, "yes")),
    ("Explanation: the prediction names the colour.\nScore: 3", (3.0, None)),
    ("Score: 2\nPred: no", (2.0, "no")),
    ('{"pred": "no", "score": 0}', (0.0, "no")),
])
def test_parse_grader_reply(reply, expected):
    assert parse_grader_reply(reply) == expected


@pytest.mark.parametrize("reply", ["", "The prediction is correct.", '{"pred": "yes"}', '{"pred": "yes", "score": 7}',
                                   "Score: high", '{"score": true}'])
def test_parse_grader_reply_malformed(reply):
    with pytest.raises(MalformedReply):
        parse_grader_reply(reply)


def test_grader_messages_carry_caption_question_answer_prediction():
    msgs = grader_messages("What color is the circle?", "red", "It is red.", "A red circle moves left.")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    for part in ("Ground-truth video caption: A red circle moves left.", "Question: What color is the circle?",
                 "Ground-truth answer: red", "Predicted answer: It is red.", '"pred"', '"score"'):
        assert part in user
    assert "caption" not in grader_messages("q", "a", "p", None)[1]["content"]
    long = grader_messages("q", "a", " ".join(["zq"] * 1000))[1]["content"]
    assert long.count("zq") == 256


# ---- the grader against the fake server --------------------------------------------------
def test_grade_results_against_fake_server(fake_grader, monkeypatch):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-test")
    client = GraderClient(fake_grader.url, "judge-model", "sk-test", timeout=5, retries=2, backoff=0.01)
    results = [_result("q-yes"), _result("q-no", prediction="blue"), _result("q-text"), _result("q-malformed"),
               _result("q-flaky"), _result("q-badbody"), _result("q-none", answer=None)]
    counts = grade_results(results, client, workers=2)
    by = {r["id"]: r for r in results}
    assert (by["q-yes"]["judge_score"], by["q-yes"]["judge_pred"], by["q-yes"]["judge_status"]) == (4.0, "yes", "ok")
    assert (by["q-no"]["judge_score"], by["q-no"]["judge_pred"]) == (1.0, "no")
    assert (by["q-text"]["judge_score"], by["q-text"]["judge_pred"]) == (3.0, None)
    assert by["q-flaky"]["judge_score"] == 5.0 and by["q-flaky"]["judge_status"] == "ok"
    assert by["q-malformed"]["judge_status"] == "malformed" and by["q-malformed"]["judge_score"] is None
    assert by["q-badbody"]["judge_status"] == "malformed"
    assert by["q-none"]["judge_status"] == "no_answer"
    assert counts == {"ok": 4, "malformed": 2, "failed": 0, "skipped": 0, "no_answer": 1, "retried": 1, "error": None}
    # 6 judged records + 1 retry of the 500; the no-answer record is never sent
    assert len(fake_grader.requests) == 7
    req = fake_grader.requests[0]
    assert req["model"] == "judge-model" and req["temperature"] == 0
    assert [m["role"] for m in req["messages"]] == ["system", "user"]
    assert all(h.get("Authorization") == "Bearer sk-test" for h in fake_grader.headers)


def test_grader_http_4xx_stops_grading(fake_grader):
    client = GraderClient(fake_grader.url, "m", timeout=5, retries=2, backoff=0.01)
    results = [_result("q-401")] + [_result(f"q-ok{i}") for i in range(3)]
    counts = grade_results(results, client, workers=1)
    assert "HTTP 401" in counts["error"] and "invalid api key" in counts["error"]
    assert counts["skipped"] == 4 and counts["ok"] == 0
    assert len(fake_grader.requests) == 1  # not retried, nothing sent after it


def test_grader_unreachable_gives_up_bounded():
    client = GraderClient(f"http://127.0.0.1:{_closed_port()}/v1", "m", timeout=2, retries=1, backoff=0.01)
    results = [_result(f"q{i}") for i in range(6)]
    counts = grade_results(results, client, workers=1, give_up_after=3)
    assert counts["failed"] == 3 and counts["skipped"] == 3 and counts["ok"] == 0
    assert counts["retried"] == 3  # one retry per failed record, then stop
    assert counts["error"].startswith("judge: no answer from http://127.0.0.1:")


def test_grader_unreachable_for_fewer_records_than_the_give_up_count_is_an_error():
    """(issue 16) 2 records, both failed, fewer than give_up_after: still an error (exit 1)."""
    client = GraderClient(f"http://127.0.0.1:{_closed_port()}/v1", "m", timeout=2, retries=0, backoff=0.01)
    counts = grade_results([_result("q0"), _result("q1")], client, workers=1, give_up_after=3)
    assert counts["failed"] == 2 and counts["ok"] == 0
    assert counts["error"].startswith("judge: no answer from http://127.0.0.1:") and "any of the 2 records" in counts["error"]


# ---- the model part ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Video-LLaVA checkpoint folder and a small synthetic QA set with one broken video."""
    from isrt.engine.adapters import load_adapter
    from isrt.engine.synthetic import make_dataset

    root = tmp_path_factory.mktemp("eval")
    load_adapter("video_llava", "tiny", num_frames=4).save_pretrained(root / "model")
    data = make_dataset(root / "data", 3, seed=0, questions_per_video=2)
    records = [json.loads(line) for line in data.read_text().splitlines()]
    (root / "data" / "broken.mp4").write_bytes(b"\x00" * 64)
    records.append({"id": "zz_broken", "video": "broken.mp4", "prompt": "What color is the circle?", "answer": "red"})
    # one record without ground truth, one with a long one (judge only, no exact match)
    records.append(dict(records[0], id="zz_noanswer", answer=None))
    records.append(dict(records[1], id="zz_long", answer="a blue triangle moving up and away"))
    data.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in records))
    return root / "model", data


def test_greedy_answers_match_generate_and_ignore_batching(tiny):
    from isrt.data import load_pool
    from isrt.engine.adapters import load_adapter
    from isrt.engine.features import FeatureCache
    from isrt.engine.generation import generate
    from isrt import prompts

    model_dir, data = tiny
    adapter = load_adapter("video_llava", str(model_dir), num_frames=4)
    cache = FeatureCache(4)
    pool = load_pool(data)
    bad: list[str] = []
    a1 = greedy_answers(adapter, cache, pool.records, batch_size=3, max_new_tokens=6, bad=bad)
    a4 = greedy_answers(adapter, cache, pool.records, batch_size=8, max_new_tokens=6)
    assert len(bad) == 1 and bad[0].startswith("zz_broken: ")
    assert [r["id"] for r in a1] == [r["id"] for r in pool.records if r["id"] != "zz_broken"]
    assert [r["prediction"] for r in a1] == [r["prediction"] for r in a4]
    good = [r for r in pool.records if r["id"] != "zz_broken"]
    direct = generate(adapter, [adapter.chat_prompt(prompts.response_prompt(r["prompt"])) for r in good],
                      [cache.get(adapter, r["video_path"]) for r in good], max_new_tokens=6, do_sample=False,
                      batch_size=8)
    assert [r["prediction"] for r in a1] == [t[0].strip() for t in direct]
    assert a1[0]["answer"] == good[0]["answer"] and a1[0]["caption"] == good[0]["caption"]
    assert "video_path" not in a1[0]


def test_eval_cli_end_to_end(tiny, fake_grader, tmp_path, capsys):
    model_dir, data = tiny
    out = tmp_path / "res.jsonl"
    rc = main(["--model", str(model_dir), "--data", str(data), "--out", str(out), "--num_frames", "4",
               "--batch_size", "3", "--max_new_tokens", "6", "--judge_url", fake_grader.url,
               "--judge_model", "m", "--judge_backoff", "0.01", "--judge_workers", "2"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8  # 6 synthetic + no-answer + long; the broken video is skipped
    by = {r["id"]: r for r in rows}
    assert by["zz_noanswer"]["exact"] is None and by["zz_noanswer"]["judge_status"] == "no_answer"
    assert by["zz_long"]["exact"] is None and by["zz_long"]["judge_status"] == "ok"
    for r in rows:
        assert r["words"] == len(r["prediction"].split())
        if r["id"].startswith("vid"):
            from isrt.scoring import score_answer
            assert r["exact"] is score_answer(r["prediction"], r["answer"])
            assert r["judge_score"] == 4.0 and r["judge_pred"] == "yes"
    summary = json.loads(summary_path(out).read_text())
    assert summary["bad_videos"] == 1 and summary["answered"] == 8 and summary["records"] == 9
    assert summary["exact_n"] == 6
    assert summary["exact_accuracy"] == sum(by[i]["exact"] for i in by if i.startswith("vid")) / 6
    assert summary["judge_n"] == 7 and summary["judge_accuracy"] == 1.0 and summary["judge_score_mean"] == 4.0
    assert summary["judge_yes_share"] == 1.0 and summary["judge_malformed"] == 0
    assert len(fake_grader.requests) == 7
    assert "Ground-truth video caption: " in fake_grader.requests[0]["messages"][1]["content"]
    printed = capsys.readouterr().out
    assert "exact match" in printed and "LLM judge: accuracy (score >= 3) 100.0%" in printed


def test_eval_cli_without_judge(tiny, tmp_path):
    model_dir, data = tiny
    out = tmp_path / "nojudge.jsonl"
    assert main(["--model", str(model_dir), "--data", str(data), "--out", str(out), "--num_frames", "4",
                 "--max_new_tokens", "4"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["judge_status"] for r in rows} == {"off"}
    assert "judge_n" not in json.loads(summary_path(out).read_text())


def test_description_names_answer():
    rec = {"prompt": "What color is the square?", "answer": "red",
           "caption": "Two objects on a plain black background: a red square moving left and a blue circle moving up."}
    assert description_names_answer(rec, "Two objects on a plain black background: a red square moving up.") is True
    assert description_names_answer(rec, "Two objects: a blue square moving left.") is False
    assert description_names_answer(rec, "Two objects: a red circle moving left.") is False  # no square named
    assert description_names_answer(rec, "") is False
    assert description_names_answer(dict(rec, caption="A red square on black."), "a red square moving up") is None
    assert description_names_answer(dict(rec, answer="a man walks slowly in the park"), "a red square") is None
    assert description_names_answer({"prompt": "What color is the square?", "answer": "red"}, "a red square") is None


def test_eval_cli_describe(tiny, tmp_path, capsys):
    """--describe: every record gets its video's greedy c_0; synthetic records say whether it
    names the answer; the summary sets that against the answers on the same records."""
    model_dir, data = tiny
    out = tmp_path / "desc.jsonl"
    assert main(["--model", str(model_dir), "--data", str(data), "--out", str(out), "--num_frames", "4",
                 "--max_new_tokens", "4", "--describe", "--describe_max_new_tokens", "8"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by = {r["id"]: r for r in rows}
    synthetic = [r for r in rows if r["id"].startswith("vid")]
    assert all(isinstance(r["description"], str) and r["description"] for r in rows)
    assert all(r["description_names_answer"] is description_names_answer(r, r["description"]) for r in rows)
    assert all(isinstance(r["description_names_answer"], bool) for r in synthetic)
    assert by["zz_noanswer"]["description_names_answer"] is None and by["zz_long"]["description_names_answer"] is None
    same_video = [r["description"] for r in rows if r["video"] == synthetic[0]["video"]]
    assert len(set(same_video)) == 1
    summary = json.loads(summary_path(out).read_text())
    assert summary["description_n"] == len(synthetic) == 6
    assert summary["description_accuracy"] == sum(r["description_names_answer"] for r in synthetic) / 6
    assert summary["description_answers_accuracy"] == sum(r["exact"] for r in synthetic) / 6
    assert "descriptions (synthetic captions): name the answer for" in capsys.readouterr().out
    # without --describe there is no description anywhere
    main(["--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "no.jsonl"), "--num_frames", "4",
          "--max_new_tokens", "4"])
    assert "description_n" not in json.loads(summary_path(tmp_path / "no.jsonl").read_text())


def test_eval_cli_user_errors_are_one_line(tiny, tmp_path, capsys, monkeypatch):
    model_dir, data = tiny
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    base = ["--data", str(data), "--out", str(tmp_path / "o.jsonl")]
    cases = [
        (["--model", str(tmp_path / "missing")] + base, "--model"),
        (["--model", str(model_dir), "--data", str(tmp_path / "nope.jsonl"), "--out", "o.jsonl"], "--data"),
        (["--model", str(model_dir)] + base + ["--judge_url", "localhost:8000", "--judge_model", "m"], "--judge_url"),
        (["--model", str(model_dir)] + base + ["--judge_url", "http://127.0.0.1:1/v1"], "--judge_model"),
        (["--model", str(model_dir)] + base + ["--judge_url", "http://127.0.0.1:1/v1", "--judge_model", "m",
                                               "--judge_api_key_env", "NO_SUCH_KEY_VAR"], "NO_SUCH_KEY_VAR"),
        (["--model", str(model_dir)] + base + ["--batch_size", "0"], "--batch_size"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.jsonl").exists()


def test_eval_cli_unreachable_judge_keeps_predictions(tiny, tmp_path, capsys):
    model_dir, data = tiny
    out = tmp_path / "down.jsonl"
    rc = main(["--model", str(model_dir), "--data", str(data), "--out", str(out), "--num_frames", "4",
               "--max_new_tokens", "4", "--judge_url", f"http://127.0.0.1:{_closed_port()}/v1", "--judge_model", "m",
               "--judge_retries", "0", "--judge_workers", "1", "--judge_timeout", "2"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: judge: no answer from http://127.0.0.1:")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and all(isinstance(r["prediction"], str) for r in rows)
    assert sum(r["judge_status"] == "failed" for r in rows) == 3
