"""Section 5: the project's assets on a real subset: a full run, then what the retraining automation
rebuilds when new images arrive in one domain, when a new domain arrives, and when nothing changed."""

from __future__ import annotations

import shutil
from pathlib import Path

from cpst_pipeline.benchmark.pipeline_run import Materialized, PipelineRun, rebuild_pipeline, run_pipeline
from cpst_pipeline.benchmark.speed.common import Context, Section, verdict
from cpst_pipeline.benchmark.speed.datasets import neu_subset, subset_datasets
from cpst_pipeline.pipeline.cross_domain import directory_key
from cpst_pipeline.resources import CpstSettings

PER_DOMAIN_MODELS = ("gate_model", "memory_bank", "calibration")


def stored_digest(run: PipelineRun, asset: str, domain: str) -> str:
    """Hash of every file of the asset partition's stored versions."""
    return directory_key(Path(run.settings.asset_storage_path()) / asset / domain)


def _computed(done: Materialized) -> str:
    return "; ".join(f"{asset} {', '.join(sorted(p or '-' for p in parts))}" for asset, parts in sorted(done.partitions.items()))


def _newly_embedded(done: Materialized) -> dict[str, int]:
    return {p: int(meta["newly_embedded"]) for (asset, p), meta in done.metadata.items() if asset == "embeddings"}


def _images_read(done: Materialized) -> int:
    return int(done.metadata[("dataset_index", None)]["images_read"])


def section_incremental(ctx: Context) -> Section:
    section = Section("incremental", f"5. Incremental rebuild with the asset definitions (device {ctx.device})")
    sizes = ctx.sizes
    work = ctx.work / "incremental"
    n_extra = max(1, round(sizes.incremental_magnetic * sizes.incremental_added))
    kolektor, magnetic, extra = subset_datasets(ctx, work / "datasets", sizes.incremental_kolektor, sizes.incremental_magnetic, n_extra)
    neu = neu_subset(ctx, work / "later", sizes.incremental_new_domain)
    roots = f"kolektor={kolektor},magnetic_tile={magnetic}"
    settings = CpstSettings(data_dir=str(work / "data"), dataset_roots=roots, device=ctx.device)

    full = run_pipeline(settings, evaluate=False)
    counts = full.splits.groupby("domain").size().to_dict()
    first_domains = sorted(counts)
    before = {(a, d): stored_digest(full, a, d) for a in PER_DOMAIN_MODELS for d in first_domains}
    full_seconds = full.materialized.total_seconds
    section.add("subset", ", ".join(f"{d} {n}" for d, n in sorted(counts.items())) + " images", "", "")
    section.add("full run (index .. cascade)", f"{full_seconds:.1f} s", "", "")
    _, cursor = rebuild_pipeline(full)  # settles the automation's cursor on the finished run

    for src, dst in extra:  # new images arrive in one domain
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    n_added = sum(1 for _, dst in extra if dst.suffix.lower() == ".jpg")
    added, cursor = rebuild_pipeline(full, cursor)
    kept = "kolektor"
    kept_identical = all(stored_digest(added, a, kept) == before[(a, kept)] for a in PER_DOMAIN_MODELS)
    ratio = added.materialized.total_seconds / full_seconds
    embedded = _newly_embedded(added.materialized)
    section.add(f"+{n_added} magnetic_tile images: rebuild of what is stale", f"{added.materialized.total_seconds:.1f} s", "", "")
    section.add("  rebuild / full", f"{ratio:.1%}", "<= 15 %", verdict(ratio, 0.15))
    section.add("  computed", _computed(added.materialized), "", "")
    section.add("  images read by the index (decoded + hashed)", str(_images_read(added.materialized)), f"{n_added} (the new ones)",
                "met" if _images_read(added.materialized) == n_added else "NOT met")
    section.add("  images embedded", ", ".join(f"{d} {n}" for d, n in sorted(embedded.items())), f"{n_added} (the new ones)",
                "met" if sum(embedded.values()) == n_added else "NOT met")
    section.add(f"  {kept} gate, bank, calibration byte-identical", str(kept_identical), "True", "met" if kept_identical else "NOT met")

    settings = CpstSettings(data_dir=settings.data_dir, dataset_roots=f"{roots},neu={neu}", device=ctx.device)
    new_domain, cursor = rebuild_pipeline(added.with_settings(settings), cursor)
    untouched = all(stored_digest(new_domain, a, d) == stored_digest(added, a, d) for a in PER_DOMAIN_MODELS for d in first_domains)
    new_ratio = new_domain.materialized.total_seconds / full_seconds
    section.add(f"a new domain (NEU-DET, {sizes.incremental_new_domain} images): rebuild", f"{new_domain.materialized.total_seconds:.1f} s", "", "")
    section.add("  rebuild / full", f"{new_ratio:.1%}", "", "")
    section.add("  computed", _computed(new_domain.materialized), "", "")
    section.add("  other domains' gates, banks, calibrations byte-identical", str(untouched), "True", "met" if untouched else "NOT met")

    again, _ = rebuild_pipeline(new_domain, cursor)
    rebuilt_models = {a: p for a, p in again.materialized.partitions.items() if a not in ("dataset_index", "splits")}
    section.add("no-change re-run", f"{again.materialized.total_seconds:.1f} s ({again.materialized.total_seconds / full_seconds:.1%} of full)", "", "")
    section.add("  images read / assets rebuilt after the re-index", f"{_images_read(again.materialized)} / {_computed(again.materialized) if rebuilt_models else 'none'}",
                "0 / none", "met" if _images_read(again.materialized) == 0 and not rebuilt_models else "NOT met")
    section.notes.append(
        "rebuilds are the retraining sensor's work run in this process (materialize_all.rebuild_stale): the re-index, then what the "
        "automation conditions request; times are the Dagster steps' durations; every run in one process (weights and file cache warm)"
    )
    section.data = {
        "images": counts,
        "added_images": n_added,
        "seconds": {name: dict(run.materialized.seconds) for name, run in (("full", full), ("added", added), ("new_domain", new_domain), ("no_change", again))},
        "ratio_added": ratio,
        "ratio_new_domain": new_ratio,
        "kept_models_identical": kept_identical,
        "models_identical_after_new_domain": untouched,
    }
    return section
