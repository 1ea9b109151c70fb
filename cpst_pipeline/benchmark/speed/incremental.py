"""Section 5: the pipeline's steps on a real subset: full run, +5 % images in one domain, no-change re-run."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

from cpst_pipeline.benchmark.speed.common import Context, Section, verdict
from cpst_pipeline.benchmark.speed.datasets import subset_datasets
from cpst_pipeline.benchmark.speed.pipeline_run import run_pipeline_steps


def file_digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(directory).iterdir()) if p.is_file()}


def section_incremental(ctx: Context) -> Section:
    section = Section("incremental", f"5. Incremental rebuild with the pipeline steps (device {ctx.device})")
    sizes = ctx.sizes
    work = ctx.work / "incremental"
    n_extra = max(1, round(sizes.incremental_magnetic * sizes.incremental_added))
    kolektor, magnetic, extra = subset_datasets(
        ctx, work / "datasets", sizes.incremental_kolektor, sizes.incremental_magnetic, n_extra
    )
    config = replace(
        ctx.config, data_dir=work / "data", dataset_roots=f"kolektor={kolektor},magnetic_tile={magnetic}", device=ctx.device
    )

    full = run_pipeline_steps(config)
    counts = full["splits"].groupby("domain").size().to_dict()
    kept = "kolektor"
    kept_bank = full["banks"][kept]
    before = file_digests(Path(kept_bank["path"]))

    for src, dst in extra:  # new images arrive in one domain
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    added = run_pipeline_steps(config)
    after_bank = added["banks"][kept]
    identical = after_bank["path"] == kept_bank["path"] and file_digests(Path(after_bank["path"])) == before
    again = run_pipeline_steps(config)

    def banks_text(run: dict) -> str:
        return ", ".join(f"{d} {'reused' if b['reused'] else 'rebuilt'}" for d, b in sorted(run["banks"].items()))

    def step_text(run: dict) -> str:
        return ", ".join(f"{k} {v:.1f}" for k, v in run["seconds"].items())

    ratio = added["total_seconds"] / full["total_seconds"]
    n_added_images = sum(1 for _, dst in extra if dst.suffix.lower() == ".jpg")
    section.add("subset", ", ".join(f"{d} {n}" for d, n in sorted(counts.items())) + " images", "", "")
    section.add("full run (index..calibration)", f"{full['total_seconds']:.1f} s", "", "")
    section.add("  per step, s", step_text(full), "", "")
    section.add(f"+{n_added_images} magnetic_tile images: re-run", f"{added['total_seconds']:.1f} s", "", "")
    section.add("  per step, s", step_text(added), "", "")
    section.add("  re-run / full", f"{ratio:.1%}", "<= 15 %", verdict(ratio, 0.15))
    section.add(
        "  images read by the index (decoded + hashed)", str(added["images_read"]), f"{n_added_images} (the new ones)",
        "met" if added["images_read"] == n_added_images else "NOT met",
    )
    section.add(
        "  images embedded",
        ", ".join(f"{d} {n}" for d, n in sorted(added["embedded"].items())),
        f"{n_added_images} (the new ones)",
        "met" if sum(added["embedded"].values()) == n_added_images else "NOT met",
    )
    section.add("  banks", banks_text(added), f"{kept} reused", "met" if after_bank["reused"] else "NOT met")
    section.add(f"  {kept} bank: same directory, byte-identical files", str(identical), "True", "met" if identical else "NOT met")
    section.add(
        "  gate / calibration",
        f"{'reused' if added['gate_reused'] else 'retrained'} / {'reused' if added['calibration_reused'] else 'recomputed'}",
        "",
        "",
    )
    nothing = (
        again["images_read"] == 0
        and sum(again["embedded"].values()) == 0
        and again["gate_reused"]
        and again["calibration_reused"]
        and all(b["reused"] for b in again["banks"].values())
    )
    section.add(
        "no-change re-run",
        f"{again['total_seconds']:.1f} s ({again['total_seconds'] / full['total_seconds']:.1%} of full)",
        "",
        "",
    )
    section.add("  per step, s", step_text(again), "", "")
    section.add(
        "  read / embedded / banks / gate / calibration",
        f"{again['images_read']} / {sum(again['embedded'].values())} / {banks_text(again)} / {'reused' if again['gate_reused'] else 'retrained'} / "
        f"{'reused' if again['calibration_reused'] else 'recomputed'}",
        "0 / 0 / all reused / reused / reused",
        "met" if nothing else "NOT met",
    )
    section.notes.append(
        "all three runs in one process (model weights and file cache warm after the first); "
        "the subset is a copy under the work folder"
    )
    section.data = {
        "images": counts,
        "added_images": n_added_images,
        "runs": {
            name: {k: v for k, v in run.items() if k not in ("splits", "cascade_dir")}
            for name, run in (("full", full), ("added", added), ("no_change", again))
        },
        "ratio": ratio,
        "kept_bank_identical": identical,
    }
    return section
