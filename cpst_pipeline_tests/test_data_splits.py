"""assign_splits: group-aware, stratified, deterministic partitions."""

from __future__ import annotations

import pandas as pd
import pytest

from cpst_pipeline.data.demo import generate_demo_dataset
from cpst_pipeline.data.index import build_index
from cpst_pipeline.data.layouts import DatasetRoot
from cpst_pipeline.data.splits import (
    SplitConfig,
    assign_splits,
    domains_without_normals,
    leaked_groups,
    split_summary,
)


def fake_index(domain: str, groups: list[tuple[int, int]]) -> pd.DataFrame:
    """One row per image: group g holds groups[g] = (normal images, anomaly images)."""
    rows = [
        {
            "domain": domain,
            "path": f"/{domain}/g{g:03d}/{label}{i}.png",
            "label": label,
            "group_id": f"{domain}/g{g:03d}",
        }
        for g, (normals, anomalies) in enumerate(groups)
        for label, n in (("normal", normals), ("anomaly", anomalies))
        for i in range(n)
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    root = generate_demo_dataset(tmp_path_factory.mktemp("demo"), images_per_domain=40, size=64)
    return build_index([DatasetRoot(root)]).index


def test_demo_splits_are_stratified_and_leak_free(demo_index: pd.DataFrame) -> None:
    splits = assign_splits(demo_index, SplitConfig())
    assert leaked_groups(splits) == []
    assert len(splits) == len(demo_index) and set(splits["image_id"]) == set(demo_index["image_id"])
    for domain, rows in splits.groupby("domain"):
        for split in ("val_mix", "test_mix"):
            assert set(rows.loc[rows["split"] == split, "label"]) == {"normal", "anomaly"}, (domain, split)
        shares = rows["partition"].value_counts(normalize=True)
        assert shares["train"] == pytest.approx(0.6, abs=0.05)
        assert shares["val"] == pytest.approx(0.2, abs=0.05)
    assert set(splits.loc[splits["split"] == "train_normal", "label"]) == {"normal"}
    assert domains_without_normals(splits) == []


def test_train_normals_are_divided_by_bank_fraction(demo_index: pd.DataFrame) -> None:
    splits = assign_splits(demo_index, SplitConfig(bank_fraction=0.75))
    train_normals = splits[(splits["partition"] == "train") & (splits["label"] == "normal")]
    bank_share = (train_normals["split"] == "train_normal").mean()
    assert bank_share == pytest.approx(0.75, abs=0.05)
    train_anomalies = splits[(splits["partition"] == "train") & (splits["label"] == "anomaly")]
    assert set(train_anomalies["split"]) == {"train_mix"}
    assert set(splits.loc[splits["partition"] == "train", "split"]) == {"train_normal", "train_mix"}


def test_row_order_does_not_matter_but_seed_does(demo_index: pd.DataFrame) -> None:
    config = SplitConfig(seed=3)
    reference = assign_splits(demo_index, config)
    shuffled = assign_splits(demo_index.sample(frac=1.0, random_state=7), config)
    pd.testing.assert_frame_equal(reference, shuffled)
    other_seed = assign_splits(demo_index, SplitConfig(seed=4))
    assert (other_seed["split"] != reference["split"]).any()


def test_groups_of_parts_stay_together_and_eval_sees_both_classes() -> None:
    # Kolektor-like: each part is photographed 8 times; most parts have one defective photo.
    index = fake_index("parts", [(7, 1)] * 30 + [(8, 0)] * 10)
    splits = assign_splits(index, SplitConfig())
    assert leaked_groups(splits) == []
    counts = splits.groupby(["partition", "label"]).size()
    for partition in ("val", "test"):
        assert counts[(partition, "normal")] > 0 and counts[(partition, "anomaly")] > 0
    assert counts[("train", "anomaly")] == pytest.approx(18, abs=2)
    # Within train a group may give normals to the bank and its defective photo to train_mix.
    assert splits.groupby("group_id")["partition"].nunique().max() == 1


def test_tiny_domain_still_gives_val_and_test_both_classes() -> None:
    index = fake_index("tiny", [(3, 0), (3, 0), (3, 0), (0, 1), (0, 1)])
    splits = assign_splits(index, SplitConfig())
    for split in ("val_mix", "test_mix"):
        assert set(splits.loc[splits["split"] == split, "label"]) == {"normal", "anomaly"}


def test_domain_without_normals_gets_no_memory_bank() -> None:
    index = pd.concat([fake_index("neu", [(0, 1)] * 100), fake_index("metal", [(1, 0)] * 60 + [(0, 1)] * 20)])
    splits = assign_splits(index, SplitConfig())
    neu = splits[splits["domain"] == "neu"]
    assert "train_normal" not in set(neu["split"])
    assert neu["split"].value_counts().to_dict() == {"train_mix": 60, "val_mix": 20, "test_mix": 20}
    assert domains_without_normals(splits) == ["neu"]


def test_group_spanning_domains_lands_in_one_partition() -> None:
    a = fake_index("a", [(1, 0)] * 20 + [(0, 1)] * 10)
    b = fake_index("b", [(1, 0)] * 20 + [(0, 1)] * 10)
    b.loc[b["group_id"] == "b/g005", "group_id"] = "a/g005"  # a byte-identical copy in both domains
    b.loc[b["group_id"] == "b/g025", "group_id"] = "a/g025"
    splits = assign_splits(pd.concat([a, b], ignore_index=True), SplitConfig(seed=1))
    assert leaked_groups(splits) == []


def test_leaked_groups_reports_groups_in_two_partitions() -> None:
    splits = pd.DataFrame({"group_id": ["g1", "g1", "g2"], "partition": ["train", "test", "val"]})
    assert leaked_groups(splits) == ["g1"]


def test_split_summary_counts_every_image(demo_index: pd.DataFrame) -> None:
    summary = split_summary(assign_splits(demo_index))
    assert list(summary.columns) == ["domain", "split", "normal", "anomaly", "total"]
    assert summary["total"].sum() == len(demo_index)
    first_domain = summary[summary["domain"] == summary["domain"].iloc[0]]
    assert list(first_domain["split"]) == ["train_normal", "train_mix", "val_mix", "test_mix"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "leave room for train"),
        ({"bank_fraction": 1.5}, "bank_fraction must lie in"),
        ({"test_fraction": -0.1}, "test_fraction must lie in"),
    ],
)
def test_invalid_config_is_rejected(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SplitConfig(**options)


def test_index_without_required_columns_is_rejected() -> None:
    with pytest.raises(ValueError, match="lacks columns.*group_id"):
        assign_splits(pd.DataFrame({"domain": ["a"], "path": ["/x"], "label": ["normal"]}))
