"""Benchmark commands: ``python -m ctxlit.bench {blocks,data,startup}``.

Each prints a table and writes JSON; speed claims are ratios against a baseline measured
in the same run, never absolute thresholds.
"""
