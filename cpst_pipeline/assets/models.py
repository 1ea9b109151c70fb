"""Model assets, one partition per domain: the domain's gate and its PatchCore memory bank."""


from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, MetadataValue, Output

from cpst_pipeline.assets.metadata import number
from cpst_pipeline.assets.partitions import domain_asset
from cpst_pipeline.patchcore.bank import MemoryBank
from cpst_pipeline.pipeline.dataset import TRAINING_SPLITS
from cpst_pipeline.pipeline.domain_images import DomainImages
from cpst_pipeline.pipeline.domain_models import fit_domain_bank, fit_domain_gate, gate_val_auroc
from cpst_pipeline.resources import CpstSettings


@domain_asset(
    group_name="models",
    code_version="1",
    description="The domain's gate MLP, trained on its train_mix (both classes) plus train_normal, class-balanced; safetensors.",
    check_specs=[AssetCheckSpec("gate_better_than_chance", asset="gate_model", description="The gate separates classes on val_mix better than chance (AUROC > 0.5).")],
)
def gate_model(context: AssetExecutionContext, settings: CpstSettings, embeddings: DomainImages):
    config = settings.pipeline_config()
    gate = fit_domain_gate(embeddings, config)
    auroc = gate_val_auroc(gate, embeddings, config)
    context.log.info(f"gate {embeddings.domain}: val AUROC {auroc}")
    yield Output(gate, metadata={"val_auroc": number(auroc), "train_images": len(embeddings.in_splits(*TRAINING_SPLITS))})
    # Checked here, where the val AUROC is measured (a separate check would re-score val).
    # A val split of one class (NEU-DET holds defects only) cannot show it: a warning, not an error.
    yield AssetCheckResult(
        check_name="gate_better_than_chance",
        passed=auroc is not None and auroc > 0.5,
        severity=AssetCheckSeverity.WARN if auroc is None else AssetCheckSeverity.ERROR,
        description="val_mix holds one class only: the gate's AUROC cannot be measured" if auroc is None else None,
        metadata={"val_auroc": number(auroc)},
    )


@domain_asset(
    group_name="models",
    code_version="2",
    description="The domain's greedy-coreset PatchCore bank + faiss index (IVF lists per patch chosen on val); none for a domain without normal images.",
)
def memory_bank(context: AssetExecutionContext, settings: CpstSettings, embeddings: DomainImages) -> Output[MemoryBank | None]:
    bank = fit_domain_bank(embeddings, settings.pipeline_config(), log=context.log.info)
    if bank is None:
        context.log.warning(f"domain {embeddings.domain} has no normal training images: no memory bank")
        return Output(None, metadata={"coreset_patches": 0, "skipped": "no normal training images"})
    return Output(
        bank,
        metadata={
            "images": bank.meta["images"],
            "source_patches": bank.meta["source_patches"],
            "coreset_patches": bank.meta["coreset_patches"],
            "build_seconds": bank.meta["build_seconds"],
            "search_probes": MetadataValue.json(bank.meta.get("search_probes") or {"nprobe": None, "reason": f"no IVF lists to choose ({type(bank.index).__name__})"}),
        },
    )
