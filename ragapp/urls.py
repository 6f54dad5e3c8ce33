from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from ragapp.documents.views import document_file

urlpatterns = [
    path("admin/", admin.site.urls),
    path("documents/<int:document_id>/file", document_file, name="document_file"),
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
]
