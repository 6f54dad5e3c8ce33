"""Why a question cannot be answered, each with the HTTP status the views send."""


class AnswerError(Exception):
    """The question cannot be answered as asked; the message says what to change."""

    error_type = "invalid_request"
    status = 400
    retry_after: int | None = None  # seconds, sent as Retry-After

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class CollectionNotFound(AnswerError):
    """No collection by that reference that the user may read."""

    error_type = "not_found"
    status = 404


class ConversationNotFound(AnswerError):
    """No conversation by that id of the user's own."""

    error_type = "not_found"
    status = 404


class ServerBusy(AnswerError):
    """This web process has all the work of this kind it may take; the same request succeeds a little later."""

    error_type = "busy"
    status = 503

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after
