"""Why a document could not be ingested, in words an administrator can act on.

Each error's message is shown as the document's failure reason in the admin, so it says
what is wrong and what to do about it, never a stack trace.
"""


class DocumentError(Exception):
    """A document cannot be ingested; `str(error)` is the reason shown to the administrator."""


class UnsupportedFileType(DocumentError):
    pass


class FileTooLarge(DocumentError):
    pass


class EmptyDocument(DocumentError):
    pass


class CorruptFile(DocumentError):
    pass


class EncryptedFile(DocumentError):
    pass


class TextEncodingError(DocumentError):
    pass


def file_too_large(size_bytes: int, limit_bytes: int) -> FileTooLarge:
    """Return the error for a file over the upload limit, with both sizes in MB."""
    megabyte = 1024 * 1024
    return FileTooLarge(
        f"The file is {size_bytes / megabyte:.1f} MB, over the {limit_bytes / megabyte:.0f} MB limit. "
        "Split it into smaller files, or raise MAX_UPLOAD_MB."
    )
