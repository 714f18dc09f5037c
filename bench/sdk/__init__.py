"""Client SDK benchmarks: ``python -m bench.sdk.<name>``."""
