"""A request's own NeuStream options (``SamplingParams.extra_args``, ``vllm_xargs`` in the
OpenAI API), checked in one place.

``request_options`` is called by the OpenAI server before a request reaches the engine
(frontend.RequestOptionsCheck, a 400 naming the field) and again by the scheduler plug-in
(scheduler.TimedScheduler.add_request, which ends just that request if a value is bad), and by
the in-process server's ``submit``. Keys other than these four are left to others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FIELDS = ("pslo", "dslo", "budget_s", "images")


@dataclass(frozen=True)
class RequestOptions:
    pslo: float  # first token due pslo x the isolated prefill after arrival
    dslo: float  # each further token dslo x its isolated decode step after the one before
    budget_s: float = 0.0  # slack carried in from a previous stage (multi-agent pipelines)
    images: int = 0  # images in the prompt (their encoder time joins the first-token allowance)


def request_options(extra: dict | None, pslo: float = 1.5, dslo: float = 1.5, *,
                    where: str = "vllm_xargs") -> RequestOptions:
    """The options in ``extra`` (``pslo``, ``dslo``: numbers > 1; ``budget_s``: a number >= 0;
    ``images``: an integer >= 0), with the server's ``pslo``/``dslo`` where absent. Raises
    ValueError naming the field (``vllm_xargs.pslo ...``; ``where`` is the prefix) on the
    first bad value."""
    extra = extra or {}
    if not isinstance(extra, dict):
        raise ValueError(f"{where} must be an object, got {type(extra).__name__}")
    return RequestOptions(
        pslo=_number(extra, "pslo", pslo, where, above=1.0),
        dslo=_number(extra, "dslo", dslo, where, above=1.0),
        budget_s=_number(extra, "budget_s", 0.0, where, at_least=0.0),
        images=_count(extra, "images", where))


def _number(extra: dict, key: str, default: float, where: str, *, above: float | None = None,
            at_least: float | None = None) -> float:
    if key not in extra:
        return float(default)
    v = extra[key]
    want = f"a number > {above:g}" if above is not None else f"a number >= {at_least:g}"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or (above is not None and v <= above) or (at_least is not None and v < at_least):
        raise ValueError(f"{where}.{key} must be {want}, got {v!r}")
    return float(v)


def _count(extra: dict, key: str, where: str) -> int:
    v = extra.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{where}.{key} must be an integer >= 0, got {v!r}")
    return v
