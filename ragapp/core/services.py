"""Start-up chores for the embedded default: the database's tables, the first administrator."""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor


def database_migrate() -> None:
    """Apply the migrations not applied yet, quietly: our commands then work on a fresh data directory.

    Nothing runs when none is pending, so a command on a migrated database pays only for the check."""
    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    if executor.migration_plan(executor.loader.graph.leaf_nodes()):
        call_command("migrate", interactive=False, verbosity=0)


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
