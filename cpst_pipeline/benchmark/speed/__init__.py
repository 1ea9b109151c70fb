"""Speed and memory benchmark, one module per section: ``python -m cpst_pipeline.benchmark.speed --help``."""
