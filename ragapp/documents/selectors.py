"""Who may read what: the one rule, as a queryset that listings filter by and the search SQL embeds."""

from django.db.models import Exists, OuterRef, QuerySet

from ragapp.documents.models import Collection


def collection_readable_by(*, user) -> QuerySet[Collection]:
    """Collections `user` may read: all for a superuser, those granted to them or to one of their groups.

    Inactive and anonymous users (and None) read nothing. Grants are tested with EXISTS, not joins,
    so the queryset needs no DISTINCT and composes into other statements (retrieval's SQL).
    """
    if not (user is not None and user.is_authenticated and user.is_active):
        return Collection.objects.none()
    if user.is_superuser:
        return Collection.objects.all()
    granted_to_user = Collection.readers.through.objects.filter(collection=OuterRef("pk"), user=user)
    granted_to_group = Collection.reader_groups.through.objects.filter(collection=OuterRef("pk"), group__user=user)
    return Collection.objects.filter(Exists(granted_to_user) | Exists(granted_to_group))
