"""The OpenAI server's side of the plug-in: it runs in vLLM's API-server process, before and
after the engine core, through two documented vLLM options.

- ``--logits-processors neustream.backends.vllm.frontend:RequestOptionsCheck``: vLLM calls a
  custom logits processor's ``validate_params`` on every request before it reaches the engine
  and answers a ValueError with HTTP 400 and the message. Ours checks the request's
  ``vllm_xargs`` with options.request_options, the same check the scheduler makes
  (``{"error": {"message": "vllm_xargs.pslo must be a number > 1, got 'abc'", ...}}``). As a
  logits processor it does nothing (argmax invariant, logits unchanged).
- ``--middleware neustream.backends.vllm.frontend.DropSignal``: a request the scheduler
  plug-in gives up (a drop: it cannot meet its SLO) reaches the client as HTTP 503 with the
  error object ``{"error": {"message": "request dropped: it cannot meet its SLO", "type":
  "RequestDropped", "param": null, "code": 503}}``, streaming or not: a stream's start is held
  until its first choice, which comes with the first token. A request dropped after tokens
  were streamed (a preempted one, back in the queue) gets the same object as its last event
  before ``data: [DONE]``. Without the middleware vLLM answers a drop like an abort: HTTP 200
  with ``finish_reason: "abort"`` and no text, or a stream with no choice at all.

How a drop is recognized: the scheduler ends it with an ABORT output whose ``stop_reason`` is
scheduler.DROPPED_REASON (FAILED_PREFIX + the error for a request whose options it refused:
then 400 with that message). A reply whose choice finished with ``abort`` is a drop; so is a
stream that ends with no choice at all (vLLM sends no chunk for a request that ends without a
token, so its stop_reason never reaches the stream). A client that disconnects gets nothing;
the scheduler logs it as ``aborted``. Applies to /v1/completions and /v1/chat/completions, one
choice per request (a request with several prompts or ``n`` > 1 gets the error when any choice
is dropped).
"""

from __future__ import annotations

import json

from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from neustream.backends.vllm.options import request_options
from neustream.backends.vllm.scheduler import DROPPED_REASON, FAILED_PREFIX

PATHS = ("/v1/completions", "/v1/chat/completions")
DROPPED_MESSAGE = "request dropped: it cannot meet its SLO"


class RequestOptionsCheck(LogitsProcessor):
    """Checks each request's NeuStream options before the engine sees it (HTTP 400 naming the
    field); a no-op as a logits processor."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        request_options(sampling_params.extra_args)

    def __init__(self, vllm_config, device, is_pin_memory: bool) -> None:
        pass

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        pass

    def apply(self, logits):
        return logits


def error_for(stop_reason: str | None) -> tuple[int, dict]:
    """(HTTP status, OpenAI error object) of a choice that finished with ``abort``."""
    if stop_reason and stop_reason.startswith(FAILED_PREFIX):
        message, status, kind = stop_reason[len(FAILED_PREFIX):], 400, "BadRequestError"
    else:
        if stop_reason not in (None, DROPPED_REASON):
            message = f"request ended by the server: {stop_reason}"
        else:
            message = DROPPED_MESSAGE
        status, kind = 503, "RequestDropped"
    return status, {"error": {"message": message, "type": kind, "param": None, "code": status}}


class DropSignal:
    """ASGI middleware (``--middleware``): turns a dropped request's reply into an error (see
    the module docstring). Everything else passes through unchanged."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope["path"] not in PATHS:
            await self.app(scope, receive, send)
            return
        reply = _Reply(send)
        await self.app(scope, receive, reply.send)
        await reply.close()


class _Reply:
    """One response on its way out. A JSON reply is held whole and replaced by the error when a
    choice was dropped. A stream's start is held until its first choice: a stream that ends
    (``[DONE]``) before any, or whose first choice is an abort, is replaced by the error reply
    (HTTP 503) as a whole; after that, events pass as they come, and an abort seen among them
    puts the error event before ``[DONE]``."""

    def __init__(self, send) -> None:
        self._send = send
        self._start: dict | None = None  # held http.response.start
        self._mode = ""  # "json", "stream", "pass" or "replaced"
        self._body = b""  # the held JSON body, or the held stream events
        self._pending = b""  # a stream's incomplete event
        self._finished = 0  # choices that finished other than by abort
        self._abort: str | None | bool = False  # stop_reason of an aborted choice, once seen
        self._error_seen = False

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            headers = {k.lower(): v for k, v in message.get("headers", [])}
            ctype = headers.get(b"content-type", b"")
            if message["status"] == 200 and ctype.startswith(b"application/json"):
                self._mode, self._start = "json", message
            elif message["status"] == 200 and ctype.startswith(b"text/event-stream"):
                self._mode, self._start = "stream", message
            else:
                self._mode = "pass"
                await self._send(message)
            return
        if self._mode == "replaced":  # the rest of a stream replaced by the error reply
            return
        if kind != "http.response.body" or self._mode == "pass":
            await self._send(message)
            return
        if self._mode == "json":
            self._body += message.get("body", b"")
            if not message.get("more_body", False):
                await self._send_json()
            return
        await self._stream(message)

    async def close(self) -> None:
        """After the app returned: whatever is still held goes out as it came."""
        if self._start is not None:
            if self._mode == "json":
                await self._send_json()
            else:
                await self._release(self._body + self._pending, more=False)

    async def _replace(self, start: dict, err_status: int, err: dict) -> None:
        body = json.dumps(err).encode()
        headers = [(k, v) for k, v in start.get("headers", [])
                   if k.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]
        await self._send({**start, "status": err_status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    # -- JSON replies ---------------------------------------------------------------------

    async def _send_json(self) -> None:
        start, self._start = self._start, None
        try:
            reply = json.loads(self._body)
        except ValueError:
            reply = None
        choices = reply.get("choices") if isinstance(reply, dict) else None
        aborted = [c for c in choices or [] if isinstance(c, dict)
                   and c.get("finish_reason") == "abort"]
        if aborted:
            await self._replace(start, *error_for(aborted[0].get("stop_reason")))
            return
        await self._send(start)
        await self._send({"type": "http.response.body", "body": self._body, "more_body": False})

    # -- streams --------------------------------------------------------------------------

    async def _stream(self, message: dict) -> None:
        data = self._pending + message.get("body", b"")
        *events, self._pending = data.split(b"\n\n")
        more = message.get("more_body", False)
        out = b""
        for event in events:
            done = event.strip() == b"data: [DONE]"
            if self._start is not None:  # nothing sent yet
                first = None if done else self._first_choice(event)
                if done and not self._error_seen or first == "abort":
                    await self._replace(self._start, *error_for(
                        None if self._abort is False else self._abort))
                    self._start, self._mode = None, "replaced"
                    return
                self._body += event + b"\n\n"
                if first is not None or done:
                    out, self._body = self._body, b""
                    await self._release(out, more=True)
                    out = b""
                continue
            if done:
                out += self._error_event()
            else:
                self._watch(event)
            out += event + b"\n\n"
        if self._start is not None:
            if not more:
                await self._release(self._body + self._pending, more=False)
            return
        if not more and self._pending:
            out, self._pending = out + self._pending, b""
        if out or not more:
            await self._send({"type": "http.response.body", "body": out, "more_body": more})

    async def _release(self, body: bytes, more: bool) -> None:
        start, self._start = self._start, None
        if start is not None:
            await self._send(start)
        if body or not more:
            await self._send({"type": "http.response.body", "body": body, "more_body": more})

    def _first_choice(self, event: bytes) -> str | None:
        """Watch a held event: "abort" if its first choice was aborted, "choice" if it has a
        choice, else None."""
        self._watch(event)
        if self._abort is not False:
            return "abort"
        chunk = _data(event)
        return "choice" if isinstance(chunk, dict) and chunk.get("choices") else None

    def _watch(self, event: bytes) -> None:
        chunk = _data(event)
        if not isinstance(chunk, dict):
            return
        if "error" in chunk:
            self._error_seen = True
        for c in chunk.get("choices") or []:
            reason = c.get("finish_reason") if isinstance(c, dict) else None
            if reason == "abort":
                self._abort = c.get("stop_reason")
            elif reason is not None:
                self._finished += 1

    def _error_event(self) -> bytes:
        if self._error_seen or (self._abort is False and self._finished):
            return b""
        _, err = error_for(None if self._abort is False else self._abort)
        return b"data: " + json.dumps(err).encode() + b"\n\n"


def _data(event: bytes):
    """The JSON of one ``data: ...`` event, or None."""
    if not event.startswith(b"data: "):
        return None
    try:
        return json.loads(event[6:])
    except ValueError:
        return None
