"""Helpers for what assets tell Dagster: progress logs and metadata values."""


from collections.abc import Callable

from dagster import AssetExecutionContext, MetadataValue


def progress_logger(context: AssetExecutionContext, what: str, every_percent: int = 10) -> Callable[[int, int], None]:
    last = {"percent": -every_percent}

    def report(done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if percent - last["percent"] >= every_percent or done == total:
            last["percent"] = percent
            context.log.info(f"{what}: {done}/{total} ({percent}%)")

    return report


def number(value: float | None) -> MetadataValue:
    """A float, or "n/a" for an undefined metric (never a made-up 0)."""
    return MetadataValue.float(float(value)) if value is not None else MetadataValue.text("n/a")
