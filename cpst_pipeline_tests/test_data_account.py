"""The full account: every file under a root is indexed, quarantined with its reason, used as a
mask, or ignored by a named rule, and the counts add up to the files on disk."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpst_pipeline.data.accounting import OUTCOMES, rule_of
from cpst_pipeline.data.index import build_index, conflicts
from cpst_pipeline.data.layouts import DatasetRoot
from cpst_pipeline.data.rules import IndexRules
from cpst_pipeline_tests.test_data_layouts import write_image, write_mask

# relative path -> (outcome, rule); the rule is the reason up to its first ":".
EXPECTED = {
    "README.md": ("ignored", "notes or metadata file"),
    ".DS_Store": ("ignored", "hidden file"),
    "data.bin": ("ignored", "not an image file"),
    "dom_a/good/n1.png": ("indexed", "indexed"),
    "dom_a/good/n2.png": ("indexed", "indexed"),
    "dom_a/good/photo.webp": ("indexed", "indexed"),
    "dom_a/good/.hidden.png": ("ignored", "hidden file"),
    "dom_a/good/notes.txt": ("ignored", "notes or metadata file"),
    "dom_a/good/anim.gif": ("quarantined", "unsupported image format"),
    "dom_a/good/empty.png": ("quarantined", "empty file"),
    "dom_a/good/text.jpg": ("quarantined", "unreadable"),
    "dom_a/good/cut.jpg": ("quarantined", "truncated image"),
    "dom_a/good/tiny.png": ("quarantined", "image too small"),
    "dom_a/good/blank.png": ("quarantined", "blank image"),
    "dom_a/good/huge.png": ("quarantined", "image too large"),
    "dom_a/good/bomb.png": ("quarantined", "image too large"),
    "dom_a/good/twin.png": ("quarantined", "label conflict"),
    "dom_a/good/shared.png": ("quarantined", "same image in domains dom_a and dom_b: same bytes as "),
    "dom_a/good/loop": ("quarantined", "symlink loop"),
    "dom_a/good/up": ("quarantined", "symlink loop"),
    "dom_a/good/outside.png": ("quarantined", "symlink outside the dataset root"),
    "dom_a/good/dangling.png": ("quarantined", "broken symlink"),
    "dom_a/good/again.png": ("ignored", "file reached twice"),
    "dom_a/loose.png": ("quarantined", "image outside the layout's image folders"),
    "dom_a/scratch/s1.png": ("indexed", "indexed"),
    "dom_a/scratch/s2.png": ("quarantined", "mask size 20x20 does not match image 40x32"),
    "dom_a/scratch/twin_defect.png": ("quarantined", "label conflict"),
    "dom_a/masks/scratch/s1.png": ("mask_of_indexed", "mask or annotation of an indexed image"),
    "dom_a/masks/scratch/s2.png": ("ignored", "mask or companion of a quarantined image"),
    "dom_a/masks/scratch/orphan.png": ("quarantined", "mask without a matching image"),
    "dom_b/good/b1.png": ("indexed", "indexed"),
    "dom_b/good/same1.png": ("indexed", "indexed"),
    "dom_b/good/same2.png": ("indexed", "indexed"),
    "dom_b/good/shared_copy.png": ("quarantined", "same image in domains dom_a and dom_b: same bytes as "),
    "dom_b_link": ("ignored", "folder reached twice"),
}


def _bomb_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (Pillow refuses it on open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * 10)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def every_case(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("account")
    root, outside = base / "data", base / "elsewhere"
    good, scratch, masks = root / "dom_a" / "good", root / "dom_a" / "scratch", root / "dom_a" / "masks" / "scratch"
    (root / "README.md").parent.mkdir(parents=True)
    (root / "README.md").write_text("notes")
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "data.bin").write_bytes(b"\1\2")
    for name in ("n1.png", "n2.png"):
        write_image(good / name)
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (32, 40), dtype=np.uint8)).save(good / "photo.webp", lossless=True)
    write_image(good / ".hidden.png")
    (good / "notes.txt").write_text("shot on line 3")
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (32, 40), dtype=np.uint8)).save(good / "anim.gif")
    (good / "empty.png").write_bytes(b"")
    (good / "text.jpg").write_text("not a jpeg")
    jpeg = write_image(good / "cut.jpg").read_bytes()
    (good / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    write_image(good / "tiny.png", size=(20, 2))
    Image.new("L", (64, 64), 128).save(good / "blank.png")
    Image.new("L", (10_000, 10_000)).save(good / "huge.png")  # 100 MP
    _bomb_png(good / "bomb.png", 30_000, 30_000)
    write_image(good / "twin.png")
    write_image(good / "shared.png")
    os.symlink("loop", good / "loop")
    os.symlink("..", good / "up")
    write_image(outside / "o.png")
    os.symlink(outside / "o.png", good / "outside.png")
    os.symlink(good / "nowhere.png", good / "dangling.png")
    os.symlink("n1.png", good / "again.png")
    write_image(root / "dom_a" / "loose.png")
    write_image(scratch / "s1.png")
    write_mask(masks / "s1.png", defective=True)
    write_image(scratch / "s2.png")
    write_mask(masks / "s2.png", defective=True, size=(20, 20))
    write_mask(masks / "orphan.png", defective=True)
    shutil.copy(good / "twin.png", scratch / "twin_defect.png")
    for name in ("b1.png", "same1.png"):
        write_image(root / "dom_b" / "good" / name)
    shutil.copy(root / "dom_b" / "good" / "same1.png", root / "dom_b" / "good" / "same2.png")
    shutil.copy(good / "shared.png", root / "dom_b" / "good" / "shared_copy.png")
    os.symlink("dom_b", root / "dom_b_link")
    (root / "dom_c").mkdir()
    return root, outside


def _files_on_disk(root: Path) -> set[str]:
    """Regular files and symlinks (to files or folders), walking without following symlinks."""
    found = set()
    for folder, dirs, files in os.walk(root):
        found |= {os.path.join(folder, name) for name in files}
        found |= {os.path.join(folder, name) for name in dirs if os.path.islink(os.path.join(folder, name))}
    return found


def test_every_file_has_exactly_one_expected_outcome(every_case) -> None:
    root, _ = every_case
    result = build_index([DatasetRoot(root)])
    account = result.account
    assert account["path"].is_unique and set(account["path"]) == _files_on_disk(root)
    assert set(EXPECTED) == {str(Path(p).relative_to(root)) for p in account["path"]}
    for path, outcome, reason in zip(account["path"], account["outcome"], account["reason"]):
        expected_outcome, expected_rule = EXPECTED[str(Path(path).relative_to(root))]
        assert (outcome, reason.startswith(expected_rule)) == (expected_outcome, True), (path, reason)
        assert rule_of(reason) == rule_of(expected_rule)

    summary = result.summary()
    assert summary.files_seen == len(_files_on_disk(root)) == sum(summary.files_by_outcome.values())
    expected_counts = {o: sum(1 for e, _ in EXPECTED.values() if e == o) for o in OUTCOMES}
    assert summary.files_by_outcome == expected_counts
    assert sum(rule.files for rule in summary.rules) == summary.files_seen

    indexed = {str(Path(p).relative_to(root)) for p in result.index["path"]}
    assert indexed == {p for p, (outcome, _) in EXPECTED.items() if outcome == "indexed"}
    same = result.index[result.index["path"].str.endswith(("same1.png", "same2.png"))]
    assert same["group_id"].nunique() == 1  # byte-identical, same domain and label: one group
    files = result.quarantine[result.quarantine["kind"] == "file"]
    assert sorted(files["path"]) == sorted(account[account["outcome"] == "quarantined"]["path"])
    folders = result.quarantine[result.quarantine["kind"] == "folder"]
    assert list(zip(folders["path"], folders["reason"])) == [(str(root / "dom_c"), "domain has no images")]
    assert len(conflicts(result.quarantine)) == 4
    reasons = dict(zip(account["path"].map(lambda p: str(Path(p).relative_to(root))), account["reason"]))
    assert "30000x30000" not in reasons["dom_a/good/bomb.png"] and "178956970" in reasons["dom_a/good/bomb.png"]
    assert reasons["dom_a/good/huge.png"].endswith("10000x10000 = 100,000,000 pixels, above max_pixels 64,000,000")
    assert reasons["dom_a/good/anim.gif"] == "unsupported image format: GIF (.gif)"


def test_settings_move_the_limits_and_allow_links_out_of_the_root(every_case) -> None:
    root, outside = every_case
    rules = IndexRules(min_short_side=1, blank_max_std=0.0, allow_symlinks_outside_root=True)
    result = build_index([DatasetRoot(root)], rules=rules)
    outcome = dict(zip(result.account["path"].map(lambda p: str(Path(p).relative_to(root))), result.account["outcome"]))
    assert outcome["dom_a/good/outside.png"] == outcome["dom_a/good/tiny.png"] == "indexed"
    assert outcome["dom_a/good/blank.png"] == "quarantined"  # a constant image has spread 0 <= 0


def test_a_symlinked_folder_outside_the_root_is_followed_only_when_allowed(tmp_path: Path) -> None:
    root, outside = tmp_path / "data", tmp_path / "shelf" / "dom_x"
    write_image(root / "dom_a" / "good" / "a.png")
    write_image(outside / "good" / "x.png")
    os.symlink(outside, root / "dom_x")
    refused = build_index([DatasetRoot(root)])
    assert set(refused.index["domain"]) == {"dom_a"}
    assert refused.account.set_index("path").loc[str(root / "dom_x"), "reason"].startswith("symlink outside the dataset root")
    allowed = build_index([DatasetRoot(root)], rules=IndexRules(allow_symlinks_outside_root=True))
    assert set(allowed.index["domain"]) == {"dom_a", "dom_x"}
    assert str(root / "dom_x" / "good" / "x.png") in set(allowed.index["path"])



@pytest.mark.parametrize("bad", [{"min_short_side": 0}, {"max_pixels": 0}, {"blank_max_std": -1.0}])
def test_impossible_limits_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="index rules need"):
        IndexRules(**bad)
