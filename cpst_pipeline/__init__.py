"""CPST: cascade anomaly detection for industrial visual inspection, as a Dagster asset pipeline."""
