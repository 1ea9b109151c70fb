"""When the retraining sensor rebuilds an asset: only when it is stale, for the reasons the UI shows.

The conditions mirror Dagster's stale markers: a missing partition, a new ``code_version``, or
an input whose data version changed. Data versions come from content (the index, the split
table, each domain's images, the cascade's files), so re-indexing without new images, or
adding a domain, leaves every other domain's gate, bank and calibration alone.
"""

from dagster import AutomationCondition

WEEKLY = "0 3 * * 1"


def reindex_weekly() -> AutomationCondition:
    """The index looks for new images every Monday at 03:00 (and on its first tick)."""
    return (AutomationCondition.on_cron(WEEKLY) | AutomationCondition.on_missing()).with_label("weekly re-index")


def rebuild_when_stale() -> AutomationCondition:
    stale = (
        AutomationCondition.newly_missing().with_label("missing")
        | AutomationCondition.code_version_changed().with_label("new code version")
        | AutomationCondition.any_deps_match(AutomationCondition.data_version_changed()).with_label("an input's data version changed")
    )
    return (
        stale.since_last_handled()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("rebuild when stale")
