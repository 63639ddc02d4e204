"""``python -m ctxlit.report RUNS... [-o FILE] [--format html|md]``: review a set of runs.

RUNS are run folders (``config.yaml`` + ``metrics.csv`` + ``summary.json``, as ``ctxlit.fit``
writes them), folders holding runs (a sweep's ``runs/sweeps/<sweep>/``) or globs. Runs that differ
only in ``seed_everything`` are grouped; each group gets mean ± std of its final metric, its
best, Δ vs the no-block baseline, and its cost (params, GFLOPs, images/s); the knobs that vary
are the table's columns. Tasks are never mixed in one table. The HTML form is one
self-contained file with plots and the attention maps the runs recorded; the Markdown form is
the table. ``--wandb ENTITY/PROJECT`` builds the W&B report and workspace instead.
"""
