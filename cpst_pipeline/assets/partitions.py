"""Domains are partitions: ``dataset_index`` adds the domains it finds and removes those it no longer finds."""

from dagster import DynamicPartitionsDefinition

domain_partitions = DynamicPartitionsDefinition(name="domain")
