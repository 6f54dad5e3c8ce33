"""The product's own health endpoint."""

from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from ragapp.core.health import DOWN, product_health


@never_cache
@require_GET
def health(request):
    """Each part's state as JSON; 503 only when the database is down, so the web itself cannot serve."""
    report = product_health()
    return JsonResponse(report, status=503 if report["status"] == DOWN else 200)
