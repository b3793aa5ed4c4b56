"""Benchmarks; their targets and latest figures are in bench/RESULTS.md. Run from the repository root as `python -m bench.<name> [--quick]`.

Each script prints one table from a single run on the current machine, ratios included.
Everything listens on 127.0.0.1 only, and every load loop is bounded in count and in time.
"""
