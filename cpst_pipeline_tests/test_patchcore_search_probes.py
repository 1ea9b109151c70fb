"""The IVF probe count chosen on val: the fewest lists whose pixel AUROC stays near exact search."""

from dataclasses import replace

import faiss
import numpy as np

from cpst_pipeline.patchcore.bank import MemoryBank, build_faiss_index, load_memory_bank, save_memory_bank
from cpst_pipeline.patchcore.scoring import ScoringConfig
from cpst_pipeline.patchcore.search_probes import ProbeRule, choose_probes, even_sample
from cpst_pipeline.patchcore.val_scores import ValImage, score_val_images
from cpst_pipeline.pipeline.domain_models import fit_domain_bank, val_images

# 256 patches per image: more than one refinement chunk, so fewer lists leave map values approximate.
GRID, SIZE, DIM = 16, 64, 8
SCORING = ScoringConfig(reweight_neighbors=1, map_sigma=1.0, position_stats=False)


def ivf_bank(nprobe: int = 16) -> MemoryBank:
    features = np.random.default_rng(0).normal(size=(4000, DIM)).astype(np.float32)
    return MemoryBank(features, build_faiss_index(features, "ivf", seed=0, ivf_nprobe=nprobe))


def val_set(with_defects: bool = True) -> list[ValImage]:
    rng = np.random.default_rng(1)
    images = []
    for i in range(12):
        patches = rng.normal(size=(GRID, GRID, DIM)).astype(np.float32)
        mask = None
        if with_defects and i % 3 == 0:
            patches[4:6, 4:6] += 1.0  # a faint defect, so approximate normal patches can outrank it
            mask = np.zeros((SIZE, SIZE), bool)
            mask[16:24, 16:24] = True
        images.append(ValImage(patches, (SIZE, SIZE), mask))
    return images


def test_fewest_probes_within_the_tolerance_are_kept_and_set_on_the_index():
    bank = ivf_bank()
    choice = choose_probes(bank, val_set(), SCORING, (SIZE, SIZE), ProbeRule(candidates=(1, 2, 4), max_pixel_auroc_loss=1.0))
    assert choice.nprobe == 1 and bank.index.nprobe == 1
    assert set(choice.pixel_auroc) == {"exact", "nprobe 1"}  # stops at the first that passes
    assert choice.summary()["nprobe"] == 1


def test_no_candidate_within_the_tolerance_keeps_the_configured_count():
    bank = ivf_bank(nprobe=16)
    choice = choose_probes(bank, val_set(), SCORING, (SIZE, SIZE), ProbeRule(candidates=(1, 2), max_pixel_auroc_loss=-1.0))
    assert choice.nprobe == 16 and bank.index.nprobe == 16
    assert set(choice.pixel_auroc) == {"exact", "nprobe 1", "nprobe 2"}
    assert "configured count kept" in choice.reason


def test_the_measured_loss_decides():
    """On this bank one and two lists lose more pixel AUROC than 0.005, four lose less: four is kept."""
    bank = ivf_bank()
    choice = choose_probes(bank, val_set(), SCORING, (SIZE, SIZE), ProbeRule(candidates=(1, 2, 4, 8), max_pixel_auroc_loss=0.005))
    figures = choice.pixel_auroc
    assert figures["exact"] - figures["nprobe 1"] > 0.005 and figures["exact"] - figures["nprobe 2"] > 0.005
    assert choice.nprobe == 4 and bank.index.nprobe == 4
    assert figures["exact"] - figures["nprobe 4"] <= 0.005 and "nprobe 8" not in figures


def test_exact_bank_and_val_without_defect_pixels():
    features = np.random.default_rng(0).normal(size=(500, DIM)).astype(np.float32)
    flat = MemoryBank(features, build_faiss_index(features, "flat"))
    assert choose_probes(flat, val_set(), SCORING, (SIZE, SIZE)) is None
    bank = ivf_bank(nprobe=16)
    choice = choose_probes(bank, val_set(with_defects=False), SCORING, (SIZE, SIZE))
    assert choice.nprobe == 16 and choice.pixel_auroc == {"exact": None}
    # bfloat16 scoring never searches the index: there are no lists to count
    assert choose_probes(bank, val_set(), replace(SCORING, search="bfloat16"), (SIZE, SIZE)) is None


def test_image_scores_are_exact_at_any_probe_count():
    """What lets the rule look at pixels only: refinement makes every image score exact."""
    bank, images = ivf_bank(), val_set()
    flat = MemoryBank(bank.features, faiss.IndexFlatL2(DIM))
    flat.index.add(bank.features)
    exact = score_val_images(flat, images, SCORING, (SIZE, SIZE)).image_scores
    bank.index.nprobe = 1
    np.testing.assert_allclose(score_val_images(bank, images, SCORING, (SIZE, SIZE)).image_scores, exact, rtol=1e-5)


def test_even_sample():
    assert even_sample(0, 5).tolist() == []
    assert even_sample(3, 5).tolist() == [0, 1, 2]
    assert even_sample(100, 5).tolist() == [0, 25, 50, 74, 99]


def test_pipeline_bank_chooses_its_probes_on_the_domain_val(tiny_pipeline):
    """An IVF bank built by the pipeline records its choice, measured on the domain's val masks."""
    run = tiny_pipeline["run"]
    config = replace(run.config, bank=replace(run.config.bank, index_type="ivf"))
    images = run.images["brushed_metal"]
    assert any(image.mask is not None for image in val_images(images, config))
    bank = fit_domain_bank(images, config, log=lambda _: None)
    choice = bank.meta["search_probes"]
    assert choice["nprobe"] == bank.index.nprobe
    assert choice["val_pixel_auroc"]["exact"] is not None


def test_the_chosen_count_survives_saving(tmp_path):
    bank = ivf_bank()
    choose_probes(bank, val_set(), SCORING, (SIZE, SIZE), ProbeRule(candidates=(2,), max_pixel_auroc_loss=1.0))
    assert load_memory_bank(save_memory_bank(bank, tmp_path / "bank")).index.nprobe == 2
