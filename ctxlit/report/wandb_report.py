"""``python -m ctxlit.report --wandb ENTITY/PROJECT [--sweep ID | --group NAME] [RUNS...]``: the
study's W&B Report and saved workspace view, built with ``wandb-workspaces`` (W&B's library for
reports and workspaces as code).

Both open with the study's answers (the table of ``--format md``: each knob's effect, its
interval, P(better), p_adj and verdict; a Markdown block in the report, a Markdown panel in the
workspace) when local RUNS are given, then a runs table of the ablation (its knobs and the metric as pinned columns), parallel
coordinates of the knobs against the metric, a bar chart grouped by configuration with seeds
aggregated (mean, std band), a scatter of the metric against GFLOPs (``model/flops``, which
every run logs to its config) and media panels of the attention maps (``attention``). The
knobs are the dotted keys that vary between the local RUNS given (a sweep's folder); without
RUNS, the panels hold the metric and the cost only.

Online (an API key and a route to the server) both are saved and their URLs printed. Offline
(``WANDB_MODE=offline``, no key, or no route within a few seconds) nothing is sent: the spec of
both (their JSON models) is written to ``--spec`` and ``--publish FILE`` saves it later.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import socket
import sys
from enum import Enum
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel

from ctxlit.report.runs import ReportError, find_runs
from ctxlit.report.study import build_studies

CONNECT_TIMEOUT = 3.0
FLOPS_KEY = "model/flops"
ATTENTION_KEY = "attention"


def _wandb_objects():
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        raise ReportError("--wandb needs wandb-workspaces: pip install -e \".[review]\"") from None
    return wr, ws


def knobs_metric_and_answers(runs: list[str], metric: str | None) -> tuple[list[str], str, str]:
    """The varying knobs, the metric and the answers table (Markdown, as ``--format md`` has it)
    of the local runs; without runs, no knobs and no answers."""
    if not runs:
        return [], metric or "val/acc1", ""
    studies = build_studies(find_runs(runs), metric)
    if len(studies) > 1:
        raise ReportError(f"the runs hold {len(studies)} tasks ({', '.join(s.task for s in studies)}): "
                          f"one W&B report per task, give one task's runs")
    from ctxlit.report.render import answers_markdown

    return studies[0].knobs, studies[0].metric, answers_markdown(studies[0])


def build(target: str, sweep: str | None = None, group: str | None = None, runs: list[str] | None = None,
          metric: str | None = None, title: str = "ctxlit report"):
    """The Report and the Workspace objects (nothing is sent)."""
    if target.count("/") != 1 or not all(target.split("/")):
        raise ReportError(f"--wandb takes ENTITY/PROJECT, got {target!r}")
    if sweep and group:
        raise ReportError("give --sweep or --group, not both")
    entity, project = target.split("/")
    wr, ws = _wandb_objects()
    knobs, metric, answers = knobs_metric_and_answers(runs or [], metric)
    chosen = f"Sweep = '{sweep}'" if sweep else f"Group = '{group}'" if group else ""
    config_keys = [wr.Config(k) for k in knobs]
    panels = [wr.MarkdownPanel(markdown=answers)] if answers else []
    panels += [
        wr.ParallelCoordinatesPlot(title=f"knobs against {metric}", columns=[
            *[wr.ParallelCoordinatesPlotColumn(metric=c) for c in config_keys],
            wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(metric))]),
        wr.BarPlot(title=f"{metric} per configuration (mean, std over seeds)", metrics=[metric],
                   groupby=config_keys[0] if len(config_keys) == 1 else None, groupby_aggfunc="mean",
                   groupby_rangefunc="stddev"),
        wr.ScatterPlot(title=f"{metric} against FLOPs", x=wr.Config(FLOPS_KEY), y=wr.SummaryMetric(metric)),
        wr.MediaBrowser(title="attention maps", media_keys=[ATTENTION_KEY], num_columns=2),
        wr.LinePlot(title=f"{metric} by step", y=[metric]),
    ]
    columns = [f"config:{k}" for k in knobs] + [f"summary:{metric}", f"config:{FLOPS_KEY}"]
    runset = wr.Runset(entity=entity, project=project, name=sweep or group or project, filters=chosen,
                       groupby=[f"config.{k}" for k in knobs], pinned_columns=columns)
    report = wr.Report(entity=entity, project=project, title=title, description=(
        f"{metric} of {'sweep ' + sweep if sweep else 'group ' + group if group else project}: knobs "
        f"{', '.join(knobs) or '(none given)'}; runs differing only in seed aggregated."),
        blocks=[wr.H1(title), *([wr.MarkdownBlock(text=answers)] if answers else []),
                wr.PanelGrid(runsets=[runset], panels=panels)])
    workspace = ws.Workspace(entity=entity, project=project, name=title,
                             sections=[ws.Section(name=title, panels=panels, is_open=True)],
                             runset_settings=ws.RunsetSettings(filters=chosen, pinned_columns=columns,
                                                               groupby=[ws.Config(k) for k in knobs]))
    return report, workspace


def spec_of(report, workspace) -> dict:
    """Both objects as JSON: every wandb-workspaces object as its class and its constructor's
    fields, so that it comes back exactly (their server form needs the network: a report's run
    set looks up the project's internal id when it is built)."""
    return {"report": _encode(report), "workspace": _encode(workspace)}


def from_spec(spec: dict):
    _wandb_objects()
    return _decode(spec["report"]), _decode(spec["workspace"])


def _fields(obj) -> list[str]:
    if dataclasses.is_dataclass(obj):
        return [f.name for f in dataclasses.fields(obj) if f.init and not f.name.startswith("_")]
    return [name for name in type(obj).model_fields if not name.startswith("_")]  # pydantic model


def _encode(value):
    if (dataclasses.is_dataclass(value) and not isinstance(value, type)) or isinstance(value, BaseModel):
        fields = {name: _encode(getattr(value, name)) for name in _fields(value)}
        if fields.get("id") == "":  # not saved yet: the server gives it one
            fields.pop("id")
        return {"__type__": f"{type(value).__module__}:{type(value).__qualname__}", **fields}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    fields = {k: _decode(v) for k, v in value.items() if k != "__type__"}
    if "__type__" not in value:
        return fields
    module, _, name = str(value["__type__"]).partition(":")
    if not module.startswith("wandb_workspaces."):
        raise ValueError(f"{value['__type__']!r} is not a wandb-workspaces class")
    return getattr(importlib.import_module(module), name)(**fields)


def online() -> tuple[bool, str]:
    """Whether saving can work now, and why not; decided without waiting on the network."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return False, f"WANDB_MODE={os.environ['WANDB_MODE']}"
    import wandb

    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = urlparse(base).hostname or "api.wandb.ai"
    key = os.environ.get("WANDB_API_KEY")
    if not key:
        try:
            key = wandb.sdk.lib.apikey.api_key(settings=wandb.Settings(base_url=base))  # ~/.netrc
        except Exception:  # noqa: BLE001
            key = None
    if not key:
        return False, "no W&B API key (wandb login, or WANDB_API_KEY)"
    try:
        socket.create_connection((host, urlparse(base).port or 443), timeout=CONNECT_TIMEOUT).close()
    except OSError as err:
        return False, f"no route to {host} ({err.__class__.__name__})"
    return True, ""


def publish(target: str, sweep: str | None, group: str | None, runs: list[str], metric: str | None,
            title: str, spec_path: Path) -> int:
    report, workspace = build(target, sweep, group, runs, metric, title)
    ok, why = online()
    if not ok:
        from ctxlit.utils.files import write_atomically

        write_atomically(spec_path, json.dumps(spec_of(report, workspace), indent=1) + "\n")
        print(f"[ctxlit] offline ({why}): nothing sent. The W&B report and workspace spec is in {spec_path};\n"
              f"         publish it later with: python -m ctxlit.report --publish {spec_path}")
        return 0
    return _save(report, workspace)


def _save(report, workspace) -> int:
    report.save()
    workspace.save()
    print(f"[ctxlit] W&B report: {report.url}\n[ctxlit] W&B workspace: {workspace.url}")
    return 0


def publish_spec(spec_path: Path) -> int:
    """Save a spec written offline, now that the server can be reached."""
    try:
        report, workspace = from_spec(json.loads(spec_path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ReportError(f"{spec_path}: not a spec written by --wandb ({err.__class__.__name__}: {err})") from None
    ok, why = online()
    if not ok:
        print(f"error: still offline ({why}); {spec_path} is kept", file=sys.stderr)
        return 2
    return _save(report, workspace)
