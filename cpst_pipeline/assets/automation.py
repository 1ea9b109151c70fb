"""When the retraining sensor rebuilds an asset: only when it is stale, for the reasons the UI shows.

The conditions mirror Dagster's stale markers: a missing partition, a new ``code_version``, or
an input whose data version changed. Data versions come from content (the index, the split
table, each domain's images, the cascade's files), so re-indexing without new images, or
adding a domain, leaves every other domain's gate, bank and calibration alone.
"""

from collections.abc import Sequence

from dagster import AssetSelection, AutomationCondition

WEEKLY = "0 3 * * 1"


def reindex_weekly() -> AutomationCondition:
    """The index looks for new images every Monday at 03:00 (and on its first tick)."""
    return (AutomationCondition.on_cron(WEEKLY) | AutomationCondition.on_missing()).with_label("weekly re-index")


def rebuild_when_stale(ignore: Sequence[str] = ()) -> AutomationCondition:
    """Rebuild when missing, on new code, or when an input (other than ``ignore``) has new data;
    once every input is present and none is being rebuilt."""
    inputs_changed = AutomationCondition.any_deps_match(AutomationCondition.data_version_changed())
    if ignore:
        inputs_changed = inputs_changed.ignore(AssetSelection.assets(*ignore))
    reason = (
        AutomationCondition.newly_missing().with_label("missing")
        | AutomationCondition.code_version_changed().with_label("new code version")
        | inputs_changed.with_label("an input's data version changed")
    )
    return (
        reason.since_last_handled() & ~AutomationCondition.any_deps_missing() & ~AutomationCondition.any_deps_in_progress() & ~AutomationCondition.in_progress()
    ).with_label("rebuild when stale")


def rebuild_when_cascade_changes() -> AutomationCondition:
    """For the report and the registered model: they read the domains' test images too, but a
    new domain reaches them through the cascade; rebuilding on the images alone would evaluate
    the old cascade on domains it does not know."""
    return rebuild_when_stale(ignore=("embeddings",))
