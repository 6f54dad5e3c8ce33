"""Start-up chores for the embedded default: the first administrator."""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model


def admin_ensure() -> str | None:
    """Create the first superuser if there is none; return a generated password to show once.

    The login comes from ADMIN_USERNAME / ADMIN_PASSWORD; without ADMIN_PASSWORD a random
    one is generated and returned, since it is never stored in clear anywhere else.
    """
    users = get_user_model()
    if users.objects.filter(is_superuser=True).exists():
        return None
    password = settings.ADMIN_PASSWORD or secrets.token_urlsafe(12)
    users.objects.create_superuser(username=settings.ADMIN_USERNAME, email=settings.ADMIN_EMAIL, password=password)
    return None if settings.ADMIN_PASSWORD else password
