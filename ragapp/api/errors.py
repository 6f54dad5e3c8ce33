"""One JSON shape for every API error: {"error": message, "error_type": kind}."""

from rest_framework.views import exception_handler

from ragapp.answers.services import AnswerError


def api_exception_handler(exception, context):
    if isinstance(exception, AnswerError):
        from rest_framework.response import Response

        return Response({"error": str(exception), "error_type": exception.error_type}, status=exception.status)
    response = exception_handler(exception, context)
    if response is not None:
        detail = response.data.get("detail") if isinstance(response.data, dict) else None
        message = str(detail) if detail is not None else _flatten(response.data)
        response.data = {"error": message, "error_type": getattr(exception, "default_code", "error"),
                         **({} if detail is not None else {"fields": response.data})}
    return response


def _flatten(data) -> str:
    if isinstance(data, dict):
        return "; ".join(f"{field}: {_flatten(value)}" for field, value in data.items())
    if isinstance(data, list):
        return " ".join(_flatten(item) for item in data)
    return str(data)
