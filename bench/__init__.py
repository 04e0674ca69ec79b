"""Benchmarks on real data. Each script writes its table (Markdown + JSON) under `docs/`.

Run them from the repository root as modules, e.g. `python -m bench.paper_table`.
"""
