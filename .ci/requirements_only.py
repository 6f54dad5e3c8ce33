"""Check, in a venv made from requirements.txt alone, that the product has everything it uses.

Every module of ragapp/ and reranking/ must import, and pypdf must read AES-encrypted PDFs
(its optional `cryptography` dependency, which no import shows). Run it
with that venv's python (any working directory); prints what is missing and exits 1, or prints one line and exits 0.
"""

import importlib
import io
import os
import pkgutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ragapp.settings")
PACKAGES = ("ragapp", "reranking")


def import_failures() -> list[str]:
    import django

    django.setup()
    failures = []
    for package in PACKAGES:
        for module in pkgutil.walk_packages([package], prefix=f"{package}."):
            try:
                importlib.import_module(module.name)
            except Exception as error:  # noqa: BLE001 - every failure is reported, none stops the walk
                failures.append(f"{module.name}: {type(error).__name__}: {error}")
    return failures


def aes_pdf_failure() -> list[str]:
    """An AES-256 PDF with only an owner password opens for anyone: the parser must read it."""
    import pypdf

    from ragapp.documents.errors import DocumentError
    from ragapp.documents.parsing import document_parse

    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=200, height=200)
    try:
        writer.encrypt(user_password="", owner_password="owner", algorithm="AES-256")
        buffer = io.BytesIO()
        writer.write(buffer)
        document_parse(buffer.getvalue(), filename="aes.pdf")
    except DocumentError as error:
        if "no text layer" in str(error):  # read fine: the blank page has no text
            return []
        return [f"AES-encrypted PDF: {error}"]
    except Exception as error:  # noqa: BLE001
        return [f"AES-encrypted PDF: {type(error).__name__}: {error}"]
    return []


def main() -> int:
    failures = import_failures() + aes_pdf_failure()
    for failure in failures:
        print(failure)
    if failures:
        print(f"{len(failures)} problem(s) with requirements.txt alone: add what is missing to requirements.txt.")
        return 1
    print("requirements.txt alone: every module of ragapp/ and reranking/ imports, and AES-encrypted PDFs open.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
