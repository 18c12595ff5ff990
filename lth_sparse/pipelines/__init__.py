"""Pipelines: each a frozen config dataclass and ``run(config, out_dir) -> summary``."""
