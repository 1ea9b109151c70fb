"""Heatmap resolution per domain: val AUROC and time per image at 256 px, 384 px and tiled near
native resolution, and the candidate ``features.resolution.choose_resolution`` keeps.

    python -m cpst_pipeline.benchmark.resolution [--out /tmp/cpst-small-defects]
        [--kolektor ../shared/datasets/KolektorSDD]

Generates the 640 px small-defect variant of the demo (``data.demo.generate_small_defect_dataset``)
under ``--out`` and, with ``--kolektor``, adds KolektorSDD. Built with the library directly:
index, splits, one memory bank per domain and candidate from its train_normal images, then
every val image scored. Time per image is features + scoring + map of one val image (decoding
excluded: it is the same for every candidate). Writes the ``resolution`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import faiss
import pandas as pd
import torch

from cpst_pipeline.benchmark.markdown import fmt, replace_section
from cpst_pipeline.data.demo import generate_small_defect_dataset
from cpst_pipeline.data.index import build_index
from cpst_pipeline.data.layouts import DatasetRoot
from cpst_pipeline.data.splits import assign_splits
from cpst_pipeline.features.backbone import BackboneConfig
from cpst_pipeline.features.embed import ResolutionConfig
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.resolution import ResolutionChoice, ResolutionRule, choose_resolution, resolution_candidates
from cpst_pipeline.patchcore.bank import BankConfig
from cpst_pipeline.patchcore.scoring import ScoringConfig
from cpst_pipeline.pipeline.heatmap_resolution import CandidateResult, CandidateRun, even_rows, measure_candidate, median_size


@dataclass(frozen=True)
class DomainResult:
    domain: str
    bank_images: int
    val_images: int
    val_defective: int
    candidates: list[CandidateResult]
    choice: ResolutionChoice


def benchmark_domain(extractor: FeatureExtractor, domain: str, rows: pd.DataFrame, bank_images: int | None) -> DomainResult:
    size = median_size(rows)
    bank_rows = even_rows(rows[rows["split"] == "train_normal"], bank_images)
    val_rows = rows[rows["split"] == "val_mix"]
    defective = int((val_rows["label"] == "anomaly").sum())
    print(f"{domain}: {size[0]:.0f}x{size[1]:.0f} px, bank {len(bank_rows)} images, val {len(val_rows)} ({defective} defective)", flush=True)
    results = []
    for candidate in resolution_candidates(*size):
        result = measure_candidate(CandidateRun(extractor, candidate, size, ResolutionConfig.max_aspect), bank_rows, val_rows, BankConfig(), ScoringConfig())
        m = result.measurement
        print(
            f"  {candidate.name:>10}: val image AUROC {fmt(m.val_image_auroc)}, pixel AUROC {fmt(result.val_pixel_auroc)}, "
            f"{1000 * m.seconds_per_image:.0f} ms/image, bank {result.bank_seconds:.0f} s",
            flush=True,
        )
        results.append(result)
    choice = choose_resolution([r.measurement for r in results])
    print(f"  chosen: {choice.chosen.name} ({choice.reason})", flush=True)
    return DomainResult(domain, len(bank_rows), len(val_rows), defective, results, choice)


def markdown(command: str, domains: list[DomainResult], threads: int) -> str:
    rule = ResolutionRule()
    lines = [
        "## Heatmap resolution per domain (val)",
        "",
        f"`{command}` on {platform.processor() or platform.machine()}, CPU, torch and faiss threads {threads}. "
        "Time: features + scoring + map per val image. Chosen by `features.resolution.choose_resolution`: "
        f"256 px is kept unless val image AUROC beats it by {rule.margin}; near ties ({rule.tie}) go to the cheaper.",
        "",
        "| domain | bank images | val images (defective) | candidate | val image AUROC | val pixel AUROC | ms / image | bank build s | chosen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for domain in domains:
        for result in domain.candidates:
            m = result.measurement
            lines.append(
                f"| {domain.domain} | {domain.bank_images} | {domain.val_images} ({domain.val_defective}) | {m.candidate.name} | "
                f"{fmt(m.val_image_auroc)} | {fmt(result.val_pixel_auroc)} | {1000 * m.seconds_per_image:.0f} | "
                f"{result.bank_seconds:.0f} | {'**yes**' if m.candidate == domain.choice.chosen else ''} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/cpst-small-defects", help="folder for the generated 640 px set")
    parser.add_argument("--images-per-domain", type=int, default=100)
    parser.add_argument("--kolektor", help="KolektorSDD folder, to check that the rule keeps 256 px there")
    parser.add_argument("--bank-images", type=int, help="cap on bank images per domain (an even sample)")
    parser.add_argument("--domains", nargs="*", help="only these domains")
    parser.add_argument("--threads", type=int, default=2, help="torch and faiss threads (the machine is shared)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    roots = [DatasetRoot(generate_small_defect_dataset(Path(args.out), images_per_domain=args.images_per_domain), "generic")]
    if args.kolektor:
        roots.append(DatasetRoot(Path(args.kolektor), "kolektor"))
    splits = assign_splits(build_index(roots).index)
    extractor = FeatureExtractor(BackboneConfig(), args.device)
    domains = [
        benchmark_domain(extractor, domain, rows, args.bank_images)
        for domain, rows in splits.groupby("domain")
        if not args.domains or domain in args.domains
    ]
    command = " ".join(["python -m cpst_pipeline.benchmark.resolution", *sys.argv[1:]])
    print(f"wrote {replace_section(Path(args.output), 'resolution', markdown(command, domains, args.threads))}")


if __name__ == "__main__":
    main()
