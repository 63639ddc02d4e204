"""``python -m ctxlit.report RUNS... [-o FILE] [--format html|md|json] [--cost]``: review a set of runs.

RUNS are run folders (``config.yaml`` + ``metrics.csv`` + ``summary.json``, as ``ctxlit.fit``
writes them), folders holding runs (a sweep's ``runs/sweeps/<sweep>/``) or globs, read through
:mod:`ctxlit.runs`. Only finished, undamaged runs are results; every other run is listed with
its status and why. Runs that differ only in ``seed_everything`` are grouped. The report opens
with the answers (:mod:`ctxlit.report.effects`): each knob's effect over a factorial grid (or each
group against its no-block baseline) with a 95% bootstrap interval, P(better), a Holm-adjusted
p-value and a verdict. Then each group's mean ± std, best, test metric, Δ vs the baseline that
differs in the block alone, params and GFLOPs (and, with ``--cost``, training and inference step
ratios measured side by side here); the knobs that vary are the columns; then each group's
provenance. Tasks are never mixed in one table. The HTML form is one self-contained file with
plots and the attention maps the runs recorded; Markdown gives the tables; JSON the record the
README documents. ``--wandb ENTITY/PROJECT`` builds the W&B report and workspace instead.
"""
