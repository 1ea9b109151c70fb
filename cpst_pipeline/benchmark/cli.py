"""Command-line options shared by the benchmark scripts that run the pipeline on real datasets."""

from __future__ import annotations

import argparse


def dataset_benchmark_parser(description: str) -> argparse.ArgumentParser:
    """``--data`` (required), ``--work``, ``--device`` and ``--output``; a script adds its own."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset roots, as CPST_DATASET_ROOTS (e.g. ../shared/datasets)")
    parser.add_argument("--work", default="data/benchmark", help="folder for caches and artifacts")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default="BENCHMARKS.md")
    return parser
