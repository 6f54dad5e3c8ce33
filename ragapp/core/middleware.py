"""Security headers the whole site sends."""

from django.conf import settings


class ContentSecurityPolicyMiddleware:
    """Send the site's Content-Security-Policy unless a view set its own (uploaded originals get `sandbox`)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response
