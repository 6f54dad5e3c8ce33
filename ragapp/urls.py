from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from ragapp.core.views import health
from ragapp.documents.views import document_file

urlpatterns = [
    path("health", health, name="health"),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("documents/<int:document_id>/file", document_file, name="document_file"),
    path("", include("ragapp.api.urls")),
    path("", include("ragapp.answers.urls")),
]
