"""contrib/grafana-dashboard.json uses only what the exposition has: every
metric name, and every label it groups or filters by."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import trio
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bulkmail.api import Mailer, MailerConfig, Relay
from bulkmail.observe import RunMetrics

from .sinkutil import start_sink

DASHBOARD = Path(__file__).parent.parent / "contrib" / "grafana-dashboard.json"
#: labels Prometheus adds when it scrapes, not the exposition
TARGET_LABELS = {"instance", "job", "le"}


async def exposition() -> dict[str, set[str]]:
    """Every sample name a real run (against the sink) exposes -> its labels."""
    metrics = RunMetrics()
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        config = MailerConfig(relay=Relay("127.0.0.1", sink.port), secure="none",
                              metrics=metrics)
        async with Mailer(config) as mailer:
            await mailer.send("s@sender.test", b"Subject: x\r\n\r\nx\r\n", ["r@dest.test"])
            text = generate_latest(metrics.registry()).decode()
        nursery.cancel_scope.cancel()
    names: dict[str, set[str]] = defaultdict(set)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names[sample.name] |= set(sample.labels)
    return names


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


async def test_every_metric_the_dashboard_uses_is_exposed() -> None:
    exposed = await exposition()
    used = {name for expr in expressions() for name in re.findall(r"\bbulkmail_\w+", expr)}
    assert len(used) >= 15
    assert used <= set(exposed), used - set(exposed)
    # and each metric family the exposition has is on the dashboard
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exposed}
    assert families <= {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}


async def test_every_label_the_dashboard_uses_is_on_its_metric() -> None:
    exposed = await exposition()
    for expr in expressions():
        for name, matchers in re.findall(r"\b(bulkmail_\w+)\{([^}]*)\}", expr):
            labels = {m.split("=")[0].strip() for m in matchers.split(",") if m}
            assert labels - TARGET_LABELS <= exposed[name], (expr, labels)
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            metric = re.findall(r"\b(bulkmail_\w+)", expr)[0]
            wanted = {g.strip() for g in grouping.split(",")} - TARGET_LABELS
            assert wanted <= exposed[metric], (expr, wanted)
