"""{% product_health as health %}: the /health report for the admin's index page."""

from django import template

from ragapp.core.health import product_health as health_report

register = template.Library()


@register.simple_tag
def product_health() -> dict:
    report = health_report()
    parts = dict(report["parts"])
    rows = [(name.replace("_", " ").capitalize(), part) for name, part in parts.items() if name != "rerankers"]
    rerankers = parts["rerankers"]
    rows += [(f"Reranker {worker['url']}", worker) for worker in rerankers["workers"]] or [("Rerankers", rerankers)]
    return {"status": report["status"], "rows": rows}
