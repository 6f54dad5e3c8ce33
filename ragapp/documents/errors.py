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
