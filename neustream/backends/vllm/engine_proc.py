"""One vLLM engine in its own process, placed on one device: ProcessServer.

NOTE on the method: the live multi-agent pipeline places its engines on several devices, as
the paper put each LLM instance on its own GPU. vLLM picks its device when it is imported and
keeps process-wide state (one distributed world, environment caches), so each engine runs in a
child process (multiprocessing ``spawn``: a fresh interpreter, nothing inherited from the
parent's vLLM) whose ``CUDA_VISIBLE_DEVICES`` names its one GPU before vLLM is imported (on
CPUs nothing is set). The child holds one backends/vllm/server.VllmServer and answers the
parent's calls over a pipe, one answer per call, in order:

- ``submit`` is a round trip while the engine is idle, so a bad argument fails at once; a
  submit made while a step runs is held and sent with the next ``step_begin`` (the child adds
  it before stepping, as an in-process submit between two steps would be), so its errors come
  back from that step's ``step_end``;
- ``step_begin`` / ``step_end`` split ``step``: the child runs the step while the parent
  starts steps of engines on other devices; ``wait_steps`` waits for any of them. The child
  stamps each step's start and end with its own wall clock (``step_begin_s``/``step_end_s``,
  epoch seconds, the clock the scheduler's step log uses);
- ``has_unfinished`` needs no round trip: the child sends it with each step's outputs, and a
  submit sets it;
- the scheduler's ``step_log`` and ``stats`` come back by ``scheduler_state()``.

Errors raised in the child come back as EngineProcessError naming the instance and the call;
a child that exits, or does not answer within the call's time limit, does too (the parent
waits on the child's process sentinel as well as the pipe, never on the pipe alone).
``close()`` (also run at collection and at exit) asks the child to stop, then terminates and
kills it if it does not, and reaps it. A child whose parent dies sees its pipe close and exits.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
import weakref
from multiprocessing import connection
from pathlib import Path

DEVICES = ("cpu", "cuda")


class EngineProcessError(RuntimeError):
    """An engine process failed a call, exited, or stopped answering. ``instance`` names the
    engine; ``detail`` holds the child's traceback when there is one."""

    def __init__(self, instance: str, message: str, detail: str = "") -> None:
        super().__init__(f"{instance}: {message}")
        self.instance = instance
        self.detail = detail


def visible_device(index: int) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value for device ``index`` of this process's GPUs (the
    index-th entry when the variable is already set, as by a batch system)."""
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if seen is None:
        return str(index)
    ids = [s.strip() for s in seen.split(",") if s.strip()]
    if index >= len(ids):
        raise ValueError(f"device {index}: CUDA_VISIBLE_DEVICES={seen!r} shows {len(ids)} GPU(s)")
    return ids[index]


class ProcessServer:
    """A backends/vllm/server.VllmServer in a child process on device ``device_index``.

    The constructor starts the child and returns at once (several engines start side by side);
    the first call waits for it to be up (``start_timeout_s``). Arguments after ``system`` are
    VllmServer's. Same calls as VllmServer (``submit`` takes an image as a file path), plus
    ``step_begin``/``step_end``, ``scheduler_state``, ``clear_step_log``.
    """

    def __init__(self, name: str, model_dir: str | Path, program, system: str, *,
                 device: str = "cpu", device_index: int = 0, start_timeout_s: float = 900.0,
                 call_timeout_s: float = 300.0, **server_kwargs) -> None:
        if device not in DEVICES:
            raise ValueError(f"{name}: device must be one of {', '.join(DEVICES)}, got {device!r}")
        if isinstance(device_index, bool) or not isinstance(device_index, int) or device_index < 0:
            raise ValueError(f"{name}: device_index must be an integer >= 0, got {device_index!r}")
        self.name = name
        self.program = program
        self.system = system
        self.device = device
        self.device_index = device_index
        self.visible = visible_device(device_index) if device == "cuda" else None
        self.start_timeout_s = start_timeout_s
        self.call_timeout_s = call_timeout_s
        self.step_begin_s: float | None = None  # epoch seconds, child's clock, last step
        self.step_end_s: float | None = None
        self._info: dict | None = None  # the child's start facts, once it is up
        self._unfinished = False
        self._stepping = False
        self._held: list[tuple] = []  # submits made while a step runs
        self._t_spawn = time.perf_counter()
        ctx = mp.get_context("spawn")
        self._conn, child_end = ctx.Pipe()
        self._proc = ctx.Process(
            target=_child_main, name=f"engine-{name}",
            args=(child_end, name, device, self.visible, (str(model_dir), program, system),
                  server_kwargs))
        self._proc.start()
        child_end.close()
        self._reap = weakref.finalize(self, _reap, self._proc, self._conn)

    # -- the engine's calls -------------------------------------------------------------------

    def submit(self, request_id: str, prompt_tokens: int, output_tokens: int,
               arrival_epoch_s: float, extra: dict | None = None, image=None) -> None:
        """VllmServer.submit in the child; held for the next step while a step runs."""
        if image is not None:
            if not isinstance(image, (str, os.PathLike)):
                raise ValueError(f"{self.name}: an engine process takes an image as a file "
                                 f"path, not {type(image).__name__}")
            image = str(image)
        args = (request_id, prompt_tokens, output_tokens, arrival_epoch_s, extra, image)
        if self._stepping:
            self._held.append(args)
        else:
            self._call("submit", args)
        self._unfinished = True

    def has_unfinished(self) -> bool:
        return self._unfinished

    def step(self) -> list[tuple[str, int, bool, str | None]]:
        """One engine step (step_begin then step_end)."""
        self.step_begin()
        return self.step_end()

    def step_begin(self) -> None:
        """Start one engine step in the child (with any submits held since the last one)."""
        if self._stepping:
            raise EngineProcessError(self.name, "step_begin while a step is running")
        self._up()
        held, self._held = self._held, []
        self._send("step", held)
        self._stepping = True

    def step_end(self) -> list[tuple[str, int, bool, str | None]]:
        """Wait for the step started by step_begin; its outputs as VllmServer.step's."""
        if not self._stepping:
            raise EngineProcessError(self.name, "step_end without step_begin")
        self._stepping = False
        outs, self.step_begin_s, self.step_end_s, self._unfinished = self._recv("step")
        return outs

    def describe(self) -> dict:
        """VllmServer.describe, plus where and how the engine process runs."""
        out = self._call("describe", ())
        out["process"] = {"pid": self.pid, "device": self.device,
                          "device_index": self.device_index, "visible_devices": self.visible,
                          **(self._info or {})}
        return out

    def scheduler_state(self) -> dict:
        """{"step_log": the scheduler's step log, "stats": its stats} (copies)."""
        return self._call("state", ())

    def clear_step_log(self) -> None:
        self._call("clear_log", ())

    def close(self) -> None:
        """Stop and reap the child (idempotent; a step in flight is abandoned)."""
        self._stepping = False
        self._reap()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    def wait_handles(self) -> list:
        """What multiprocessing.connection.wait can wait on: the pipe and the child's sentinel."""
        return [self._conn, self._proc.sentinel]

    # -- the pipe -----------------------------------------------------------------------------

    def _up(self) -> None:
        if self._info is None:
            self._info = self._recv("start", self.start_timeout_s)
            self._info["ready_s"] = round(time.perf_counter() - self._t_spawn, 3)

    def _call(self, op: str, payload):
        if self._stepping:
            raise EngineProcessError(self.name, f"{op} while a step is running")
        self._up()
        self._send(op, payload)
        return self._recv(op)

    def _send(self, op: str, payload) -> None:
        if not self._reap.alive:
            raise EngineProcessError(self.name, f"{op} after close()")
        try:
            self._conn.send((op, payload))
        except (OSError, ValueError) as e:
            raise EngineProcessError(self.name, f"{op}: the engine process is gone ({e})") from None

    def _recv(self, op: str, timeout_s: float | None = None):
        limit = self.call_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            ready = connection.wait(self.wait_handles(), timeout=max(0.0, left))
            if self._conn.poll():  # an answer first, even from a child that then exited
                try:
                    status, value, detail = self._conn.recv()
                except (EOFError, OSError):
                    break
                if status == "err":
                    raise EngineProcessError(self.name, f"{op} failed: {value}", detail)
                return value
            if self._proc.sentinel in ready or not self._proc.is_alive():
                break
            if left <= 0:
                raise EngineProcessError(self.name, f"no answer to {op} within {limit:.0f} s")
        self._proc.join(1.0)
        raise EngineProcessError(self.name, f"engine process exited (code {self._proc.exitcode}) "
                                            f"during {op}")


def wait_steps(servers: list[ProcessServer], timeout_s: float) -> list[ProcessServer]:
    """Those of ``servers`` (each with a step running) whose step answered or whose process
    ended, waiting up to ``timeout_s`` for the first; [] on timeout."""
    by_handle = {}
    for s in servers:
        for h in s.wait_handles():
            by_handle[h] = s
    ready = connection.wait(list(by_handle), timeout=timeout_s)
    out: list[ProcessServer] = []
    for h in ready:
        if by_handle[h] not in out:
            out.append(by_handle[h])
    return out


def _reap(proc, conn) -> None:
    """Ask the child to stop, then terminate and kill it if it does not; join it."""
    if proc.is_alive():
        try:
            conn.send(("close", None))
        except (OSError, ValueError):
            pass
        proc.join(20.0)
    if proc.is_alive():
        proc.terminate()
        proc.join(5.0)
    if proc.is_alive():
        proc.kill()
        proc.join()
    conn.close()


# -- the child ----------------------------------------------------------------------------------


def _child_main(conn, name: str, device: str, visible: str | None, args: tuple,
                kwargs: dict) -> None:
    """The engine process: build the server on its device, then answer calls until close."""
    if device == "cuda":
        os.environ["CUDA_VISIBLE_DEVICES"] = visible  # before vLLM (and torch's CUDA) start
        from neustream.backends.devices import NCCL_SAFE_ENV

        os.environ.update(NCCL_SAFE_ENV)  # NVLink multicast off on the shared multi-GPU hosts
    t0 = time.perf_counter()
    try:
        from neustream.backends.vllm.server import VllmServer

        server = VllmServer(*args, device=device, **kwargs)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then exit
        _answer(conn, "err", f"start: {type(e).__name__}: {e}", traceback.format_exc())
        return
    _answer(conn, "ok", {"pid": os.getpid(), "start_s": round(time.perf_counter() - t0, 3)})
    try:
        while True:
            try:
                op, payload = conn.recv()
            except (EOFError, OSError, KeyboardInterrupt):
                break  # the parent is gone
            if op == "close":
                break
            try:
                value = _do(server, op, payload)
            except Exception as e:  # noqa: BLE001 - the parent raises it, naming the engine
                _answer(conn, "err", f"{type(e).__name__}: {e}", traceback.format_exc())
            else:
                _answer(conn, "ok", value)
    finally:
        server.close()


def _do(server, op: str, payload):
    if op == "submit":
        return server.submit(*payload)
    if op == "step":
        for args in payload:  # submits held while the last step ran
            server.submit(*args)
        t_begin = time.time()
        outs = server.step()
        return outs, t_begin, time.time(), server.has_unfinished()
    if op == "describe":
        return server.describe()
    if op == "state":
        return {"step_log": list(server.scheduler.step_log), "stats": dict(server.scheduler.stats)}
    if op == "clear_log":
        return server.scheduler.step_log.clear()
    raise ValueError(f"unknown call {op!r}")


def _answer(conn, status: str, value, detail: str = "") -> None:
    try:
        conn.send((status, value, detail))
    except (OSError, ValueError):
        pass  # the parent is gone
