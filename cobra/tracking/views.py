"""A sweep's saved view in MLflow's experiment page: the runs list and charts a researcher opens
to compare its trials, declared by the sweep instead of clicked together by each user.

MLflow 3.17's UI keeps named views as experiment tags `mlflow.sharedViewState.<id>` (its
*Views* menu lists them; `?viewStateShareKey=<id>` opens one). A view is the UI's own state:
the run filter and sort, the list's columns and the chart cards. Its schema is the UI's, read
from its bundle (not a public API), so it lives here, in one place, and a test pins it.

What a view cannot do (MLflow 3.17): be the default when the page opens (the UI starts from its
own columns, saved per browser), or change the legacy Compare page (its parallel coordinates
print every numeric param with five decimals; its scatter and contour plots open on the
alphabetically first params and metrics)."""

import json
import time

from cobra.tracking import tags as tag
from cobra.tracking.queries import get_run
from cobra.tracking.store import Store

SECTION = "section"  # the uuid of the view's one chart section (uuids are the UI's keys)


def _column(kind: str, key: str) -> str:
    """A runs-list column as the UI names it: ``metrics.`seed_miou` ``."""
    return f"{kind}.`{key}`"


def _card(uuid: str, kind: str, **config) -> dict:
    return {"uuid": uuid, "type": kind, "metricSectionId": SECTION, "deleted": False,
            "isGenerated": False, "runsCountToCompare": 100, **config}


def _axis(key: str, is_param: bool) -> dict:
    return {"key": key, "type": "PARAM" if is_param else "METRIC"}


def sweep_view_state(sweep: str, metric: str, mode: str, searched: list[str],
                     replicate_key: str | None) -> dict:
    """The UI state of a sweep's view: its trials only, best first, the metric and searched
    keys as the list's first columns; charts of the metric against every searched key
    (parallel coordinates, a scatter per key, a contour over the first two keys)."""
    charts = [_card("parallel", "PARALLEL", selectedParams=list(searched),
                    selectedMetrics=[metric], showAllRuns=True),
              _card("bar", "BAR", metricKey=metric)]
    charts += [_card(f"scatter-{i}", "SCATTER", xaxis=_axis(key, True),
                     yaxis=_axis(metric, False)) for i, key in enumerate(searched)]
    if len(searched) >= 2:
        charts.append(_card("contour", "CONTOUR", xaxis=_axis(searched[0], True),
                            yaxis=_axis(searched[1], True), zaxis=_axis(metric, False)))
    shown = [*searched, *([replicate_key] if replicate_key else [])]
    state = {
        "orderByKey": _column("metrics", metric), "orderByAsc": mode == "min",
        "selectedColumns": [_column("metrics", metric), *(_column("params", k) for k in shown)],
        "compareRunCharts": charts,
        "compareRunSections": [{"uuid": SECTION, "name": f"sweep {sweep}: {metric}",
                                "display": True, "isReordered": False, "deleted": False,
                                "isGenerated": False}],
        # the sweep's section stays first when the UI adds its generated metric sections
        "isAccordionReordered": True,
        # every trial in the charts, not the UI's default first ten
        "runsHiddenMode": "SHOW_ALL",
    }
    if "'" not in sweep:  # MLflow's filter grammar has no escape for a quote
        state["searchFilter"] = f"tags.`{tag.SWEEP}` = '{sweep}' and tags.`{tag.KIND}` = 'trial'"
    return state


def view_id(parent_run_id: str) -> str:
    """One view per sweep: a resumed sweep sets the same one again."""
    return f"cobra-{parent_run_id}"


def save_sweep_view(store: Store, parent_run_id: str, sweep: str, metric: str, mode: str,
                    searched: list[str], replicate_key: str | None = None) -> str:
    """Save the sweep's view on its experiment (the *Views* menu lists it as `sweep <name>`)
    and return a markdown link that opens it in the Chart view."""
    client = store.client
    experiment = get_run(store, parent_run_id).info.experiment_id
    key = view_id(parent_run_id)
    now = int(time.time() * 1000)
    state = sweep_view_state(sweep, metric, mode, searched, replicate_key)
    envelope = {"name": f"sweep {sweep}", "createdAt": now, "updatedAt": now,
                "state": json.dumps(state, separators=(",", ":"))}
    client.set_experiment_tag(experiment, f"{tag.SAVED_VIEW_PREFIX}{key}",
                              json.dumps(envelope, separators=(",", ":")))
    return (f"[charts]"
            f"(#/experiments/{experiment}/runs?viewStateShareKey={key}&compareRunsMode=CHART)")
