#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys

# PostgreSQL's undefined_table: a command queried a table that `migrate` has not made yet.
UNDEFINED_TABLE = "42P01"


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ragapp.settings")
    from django.core.management import execute_from_command_line
    from django.db.utils import ProgrammingError

    try:
        execute_from_command_line(sys.argv)
    except ProgrammingError as error:
        if getattr(error.__cause__, "sqlstate", None) != UNDEFINED_TABLE:
            raise
        # Django's own commands (createsuperuser, changepassword...) do not migrate first; ours do.
        sys.exit(f"The database is not migrated yet ({str(error).splitlines()[0]}). "
                 "Run `python manage.py migrate` first (`python manage.py serve` migrates too).")


if __name__ == "__main__":
    main()
