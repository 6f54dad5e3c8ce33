"""The database backend of the embedded default: Django's PostgreSQL backend, whose first connection
in a process starts the embedded server (or joins the one another process started).

Settings name it (`ENGINE: "ragapp.database"`) only when DATABASE_URL is unset; see `ragapp.database`.
"""

from pathlib import Path

from django.db.backends.postgresql import base, client

from ragapp.database import embedded_socket_dir


class DatabaseClient(client.DatabaseClient):
    """`manage.py dbshell`: psql on the embedded server's socket, starting the server first if needed."""

    def runshell(self, parameters):
        self.connection.embedded_server_join()
        super().runshell(parameters)


class DatabaseWrapper(base.DatabaseWrapper):
    client_class = DatabaseClient

    def get_connection_params(self):
        # Procrastinate's worker builds its own connections from these parameters, so it joins here too.
        self.embedded_server_join()
        return super().get_connection_params()

    def embedded_server_join(self) -> None:
        """Start or join the embedded server, and connect through its socket (recorded as HOST)."""
        self.settings_dict["HOST"] = embedded_socket_dir(data_dir=Path(self.settings_dict["DATA_DIR"]))
