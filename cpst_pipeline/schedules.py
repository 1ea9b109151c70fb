"""Retraining: a sensor that evaluates the assets' automation conditions (assets/automation.py):
the index is refreshed weekly and everything downstream is rebuilt only where it is stale.
Off until someone turns it on; each evaluation is shown in the UI with the reason per asset."""


from dagster import AssetSelection, AutomationConditionSensorDefinition, DefaultSensorStatus

retrain_sensor = AutomationConditionSensorDefinition(
    "retrain_when_stale",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.STOPPED,
    description="Re-index weekly; rebuild what is missing or stale; register a challenger when the cascade changed.",
)
