"""Client SDK benchmarks, each runnable as ``python -m bench.sdk.<name>``.

* :mod:`bench.sdk.messages`: one-way message stream between two SDK clients in separate
  processes through one relay process, against the same relay's raw ceiling.
"""
