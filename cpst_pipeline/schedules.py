"""Retraining: rebuild what is stale and register a challenger. Off until someone turns it on."""


from dagster import AssetSelection, DefaultScheduleStatus, ScheduleDefinition, define_asset_job

# Every step reuses artifacts whose inputs did not change, so a full-graph job only redoes stale work.
retrain_job = define_asset_job("retrain_cascade", selection=AssetSelection.all(), description="Rebuild the cascade and register a challenger.")

weekly_retrain_schedule = ScheduleDefinition(
    name="weekly_retrain",
    job=retrain_job,
    cron_schedule="0 3 * * 1",
    default_status=DefaultScheduleStatus.STOPPED,
)
