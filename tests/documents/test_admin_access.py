"""The admin shows staff who are not superusers only the collections they may read."""

import pytest
from django.contrib.auth.models import Permission, User

from ragapp.documents.services import collection_get_or_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, collection, ingest):
    ingest(collection, "travel.txt", b"Taxi rides need a receipt.")
    secret = collection_get_or_create(name="Secret B")
    ingest(secret, "merger.txt", b"The confidential merger closes in May.")
    user = User.objects.create_user("editor", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="documents"))
    collection.readers.add(user)
    client.force_login(user)
    return client


def test_staff_see_only_documents_chunks_and_collections_they_may_read(staff_client):
    documents = staff_client.get("/admin/documents/document/").content.decode()
    assert "travel" in documents and "merger" not in documents and "Secret B" not in documents
    chunks = staff_client.get("/admin/documents/chunk/").content.decode()
    assert "Taxi rides" in chunks and "confidential" not in chunks
    collections = staff_client.get("/admin/documents/collection/").content.decode()
    assert "Handbook" in collections and "Secret B" not in collections
    upload = staff_client.get("/admin/documents/document/upload/").content.decode()
    assert "Handbook" in upload and "Secret B" not in upload
