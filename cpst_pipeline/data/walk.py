"""Every file under a dataset root, and what its symlinks do.

The walk does not follow symlinks on its own: each symlink is judged first. One that loops,
dangles or leaves the root (unless allowed) is quarantined; a symlinked folder whose target is
already under the root is passed over, so a folder reached twice is indexed once; a symlinked
file is kept as a file. Layout readers list images through symlinks; only what the walk keeps
can be indexed.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Outcome = Literal["indexed", "quarantined", "mask_of_indexed", "ignored"]


@dataclass(frozen=True)
class Verdict:
    """The outcome of a file and the rule that decided it (reason of a quarantine)."""

    outcome: Outcome
    rule: str


FOLLOWED_FOLDER = Verdict("ignored", "symlinked folder, followed (its files are listed one by one)")


@dataclass(frozen=True)
class WalkedFile:
    path: str  # as reached from the root: symlinks are not resolved
    real_path: str | None  # the file it stands for; None when it cannot be resolved
    verdict: Verdict | None  # decided by the walk itself (symlink rules); None: up to the index


@dataclass(frozen=True)
class WalkedRoot:
    root: str
    files: list[WalkedFile]
    blocked_folders: list[str]  # symlinked folders not followed: nothing under them is indexed

    def is_blocked(self, path: str) -> bool:
        return any(_is_within(path, folder) for folder in self.blocked_folders)


def walk_root(root: Path, allow_outside: bool) -> WalkedRoot:
    """Every file and symlink under ``root`` (a resolved folder), in sorted order."""
    root_text = str(root)
    real_folders = {os.path.realpath(folder) for folder, _, _ in os.walk(root)}  # os.walk follows no symlink
    files: list[WalkedFile] = []
    blocked: list[str] = []
    followed: set[str] = set()
    pending = [root_text]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as entries:
            ordered = sorted(entries, key=lambda entry: entry.name)  # the first of two links to one folder wins
        for entry in ordered:
            if not entry.is_symlink():
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    files.append(WalkedFile(entry.path, entry.path, None))
                continue
            verdict, target = _judge_symlink(entry.path, root_text, allow_outside)
            if verdict is None and os.path.isdir(target):
                verdict = _judge_folder_link(entry.path, target, real_folders | followed)
                if verdict is None:
                    followed.add(target)
                    pending.append(entry.path)
                    files.append(WalkedFile(entry.path, target, FOLLOWED_FOLDER))
                    continue
            if verdict is not None:
                blocked.append(entry.path)  # readers list through symlinks: nothing under it counts
            files.append(WalkedFile(entry.path, target, verdict))
    return WalkedRoot(root_text, _pass_over_second_paths(sorted(files, key=lambda f: f.path)), blocked)


def _pass_over_second_paths(files: list[WalkedFile]) -> list[WalkedFile]:
    """A symlink to a file that the walk also reaches as itself is passed over, not indexed twice."""
    regular = {f.real_path for f in files if f.path == f.real_path}
    return [
        WalkedFile(f.path, f.real_path, Verdict("ignored", f"file reached twice: a symlink to {f.real_path}"))
        if f.verdict is None and f.path != f.real_path and f.real_path in regular
        else f
        for f in files
    ]


def _judge_symlink(link: str, root: str, allow_outside: bool) -> tuple[Verdict | None, str | None]:
    try:
        target = os.path.realpath(link, strict=True)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return Verdict("quarantined", "symlink loop"), None
        return Verdict("quarantined", "broken symlink: its target does not exist"), None
    if not allow_outside and not _is_within(target, root):
        return Verdict("quarantined", f"symlink outside the dataset root: points to {target}"), target
    return None, target


def _judge_folder_link(link: str, target: str, reached: set[str]) -> Verdict | None:
    if _is_within(os.path.dirname(link), target):
        return Verdict("quarantined", "symlink loop: points to a folder that contains it")
    if any(_is_within(target, folder) for folder in reached):
        return Verdict("ignored", "folder reached twice: a symlink to a folder already indexed")
    return None


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
