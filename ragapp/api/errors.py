"""Every API error in one of two JSON shapes, decided here.

/api/v1/: {"error": message, "error_type": kind}, plus "fields" when the input was invalid.
/v1/ (OpenAI-compatible): OpenAI's {"error": {"message", "type", "param", "code"}}, which the
`openai` client reads into its exception (`str(error)` ends with the message).
"""

import logging

from django.conf import settings
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler

from ragapp.answers.errors import AnswerError, CollectionNotFound

logger = logging.getLogger(__name__)

# What to do about a 401, for OpenAI clients, which only show the message.
API_KEY_HINT = "Use an API token of this server as the API key (create one in the admin under Auth Token)."


def api_exception_handler(exception, context):
    """Errors of the REST API (/api/v1/): DRF's EXCEPTION_HANDLER."""
    described = _described(exception, context)
    if described is None:
        return None
    response, message, fields = described
    kind = exception.error_type if isinstance(exception, AnswerError) else getattr(exception, "default_code", "error")
    response.data = api_error_body(message, error_type=kind, fields=fields)
    return response


def api_error_body(message: str, *, error_type: str, fields: dict | list | None = None) -> dict:
    return {"error": message, "error_type": error_type, **({} if fields is None else {"fields": fields})}


def openai_exception_handler(exception, context):
    """Errors of the OpenAI-compatible views (/v1/), which name it as their handler."""
    described = _described(exception, context)
    if described is None:
        return _openai_internal_error(exception)
    response, message, fields = described
    if response.status_code == 401:
        message = f"{message} {API_KEY_HINT}"
    param = next(iter(fields), None) if isinstance(fields, dict) else None
    response.data = openai_error_body(message, status=response.status_code, code=_openai_code(exception), param=param)
    return response


def _openai_internal_error(exception) -> Response | None:
    """A bug, still in OpenAI's shape (clients read no HTML page); logged with its traceback. DEBUG shows Django's page."""
    if settings.DEBUG:
        return None
    logger.error("Internal error in an OpenAI-compatible view", exc_info=exception)
    return openai_error("The server failed to answer: an internal error, recorded in its log. Try again later.",
                        status=500)


def openai_error(message: str, *, status: int, code: str | None = None, param: str | None = None) -> Response:
    return Response(openai_error_body(message, status=status, code=code, param=param), status=status)


def openai_error_body(message: str, *, status: int, code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error object: its API says invalid_request_error for every 4xx, server_error for a 5xx."""
    error_type = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _openai_code(exception) -> str | None:
    """OpenAI's own codes where it has one for the case (clients branch on them); otherwise none, as it sends."""
    if isinstance(exception, CollectionNotFound):
        return "model_not_found"  # a model is a collection here
    return {"not_authenticated": "invalid_api_key",
            "authentication_failed": "invalid_api_key"}.get(getattr(exception, "default_code", None))


def _described(exception, context) -> tuple[Response, str, dict | list | None] | None:
    """DRF's response (status, headers, rollback), its message and any per-field problems; None if unexpected."""
    if isinstance(exception, AnswerError):
        return Response(status=exception.status, headers=exception.headers()), str(exception), None
    response = exception_handler(exception, context)
    if response is None:
        return None
    detail = response.data.get("detail") if isinstance(response.data, dict) else None
    if detail is not None:
        return response, str(detail), None
    return response, _flatten(response.data), response.data


def _flatten(data) -> str:
    """One line from DRF's per-field problems: "messages: This list may not be empty."."""
    if isinstance(data, dict):
        return "; ".join(("" if field == api_settings.NON_FIELD_ERRORS_KEY else f"{field}: ") + _flatten(value)
                         for field, value in data.items())
    if isinstance(data, list):
        return " ".join(_flatten(item) for item in data)
    return str(data)
