"""Who may read a collection: one rule, the same in listings (the ORM) and in the search statement (SQL)."""

import pytest
from django.contrib.auth.models import AnonymousUser, Group, User

from ragapp.documents.selectors import collection_readable_by
from ragapp.documents.services import collection_get_or_create
from ragapp.retrieval.selectors import chunk_search

pytestmark = pytest.mark.django_db


@pytest.fixture
def handbook(collection, ingest):
    ingest(collection, "travel.txt", b"Taxi rides need a receipt from the driver.")
    return collection


@pytest.fixture
def other(ingest):
    collection = collection_get_or_create(name="Payroll")
    ingest(collection, "pay.txt", b"Salaries are paid on the last working day; a taxi receipt is no payslip.")
    return collection


def _reads(user, collection) -> tuple[bool, bool]:
    """(listed by the ORM rule, found by the search SQL) for `user` and `collection`."""
    listed = collection_readable_by(user=user).filter(pk=collection.pk).exists()
    found = bool(chunk_search(query="taxi receipt", collection=collection, reader=user, k=5))
    return listed, found


def test_a_reader_reads_the_collection_granted_and_no_other(handbook, other):
    reader = User.objects.create_user("reader")
    handbook.readers.add(reader)
    assert _reads(reader, handbook) == (True, True)
    assert _reads(reader, other) == (False, False)


def test_a_group_member_reads_what_the_group_was_granted(handbook, other):
    group = Group.objects.create(name="travellers")
    member = User.objects.create_user("member")
    member.groups.add(group)
    handbook.reader_groups.add(group)
    assert _reads(member, handbook) == (True, True)
    assert _reads(member, other) == (False, False)


def test_a_user_in_a_group_and_granted_directly_sees_each_collection_once(handbook):
    group = Group.objects.create(name="travellers")
    user = User.objects.create_user("both")
    user.groups.add(group)
    handbook.reader_groups.add(group)
    handbook.readers.add(user)
    assert list(collection_readable_by(user=user)) == [handbook]


def test_a_superuser_reads_every_collection(handbook, other):
    root = User.objects.create_superuser("root", password="pw")
    assert _reads(root, handbook) == (True, True)
    assert _reads(root, other) == (True, True)


def test_an_inactive_user_reads_nothing_even_when_granted_or_superuser(handbook):
    former = User.objects.create_user("former", is_active=False)
    handbook.readers.add(former)
    former_root = User.objects.create_superuser("former-root", password="pw", is_active=False)
    assert _reads(former, handbook) == (False, False)
    assert _reads(former_root, handbook) == (False, False)


def test_an_anonymous_user_and_an_outsider_read_nothing(handbook):
    outsider = User.objects.create_user("outsider")
    assert _reads(AnonymousUser(), handbook) == (False, False)
    assert _reads(outsider, handbook) == (False, False)


def test_no_user_is_no_reader_for_listings_but_a_trusted_caller_for_search(handbook):
    assert not collection_readable_by(user=None).exists()
    assert chunk_search(query="taxi receipt", collection=handbook, reader=None, k=5)


def test_a_grant_withdrawn_is_no_longer_read(handbook):
    reader = User.objects.create_user("reader")
    handbook.readers.add(reader)
    handbook.readers.remove(reader)
    assert _reads(reader, handbook) == (False, False)
