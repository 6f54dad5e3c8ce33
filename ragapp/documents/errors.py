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


class ArchiveTooLarge(FileTooLarge):
    pass


class EmptyDocument(DocumentError):
    pass


class CorruptFile(DocumentError):
    pass


class EncryptedFile(DocumentError):
    pass


class TextEncodingError(DocumentError):
    pass


class WorkerStopped(DocumentError):
    pass


MEGABYTE = 1024 * 1024


def file_too_large(size_bytes: int, limit_bytes: int) -> FileTooLarge:
    """Return the error for a file over the upload limit, with both sizes in MB."""
    return FileTooLarge(
        f"The file is {size_bytes / MEGABYTE:.1f} MB, over the {limit_bytes / MEGABYTE:.0f} MB limit. "
        "Split it into smaller files, or raise MAX_UPLOAD_MB."
    )


def archive_too_large(*, expanded_bytes: int, members: int, limits) -> ArchiveTooLarge:
    """Return the error for a ZIP-based file (DOCX) that would unpack to more than the limits allow."""
    if members > limits.max_archive_members:
        return ArchiveTooLarge(
            f"The file is an archive of {members:,} parts, more than the {limits.max_archive_members:,} allowed, "
            "so it was not unpacked. If it is a real document, save it again from its application, "
            "or raise MAX_ARCHIVE_MEMBERS."
        )
    return ArchiveTooLarge(
        f"The file expands to more than {limits.max_expanded_bytes / MEGABYTE:.0f} MB when unpacked "
        f"({expanded_bytes / MEGABYTE:,.0f} MB), so it was not read. Split the document into smaller files, "
        "or raise MAX_EXPANDED_MB."
    )


def worker_stopped(attempts: int) -> WorkerStopped:
    """Return the error for a document whose worker died during every attempt to ingest it."""
    times = "once" if attempts == 1 else f"{attempts} times"
    return WorkerStopped(
        f"The ingestion worker stopped {times} while reading this document, before it was done: most often it ran "
        "out of memory. Split the document into smaller files, or give the worker more memory (see its log), "
        "then re-ingest it."
    )
