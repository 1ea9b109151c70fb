"""Domains are partitions: the index step adds the domains it finds and removes those it no longer finds.
Per-domain assets have one partition per domain; cross-domain assets read them all."""

from dagster import AutomationCondition, DynamicPartitionsDefinition, asset

from cpst_pipeline.assets.automation import rebuild_when_stale

domain_partitions = DynamicPartitionsDefinition(name="domain")


def domain_asset(**kwargs):
    """An asset with one partition per domain, rebuilt by the retraining sensor where stale."""
    return asset(partitions_def=domain_partitions, automation_condition=rebuild_when_stale(), **kwargs)


def cross_domain_asset(automation_condition: AutomationCondition | None = None, **kwargs):
    """An unpartitioned asset that reads every domain partition (group "evaluation")."""
    return asset(group_name="evaluation", automation_condition=automation_condition or rebuild_when_stale(), **kwargs)
