"""Admin: collections, document upload with live status, re-ingest and delete, chunk lists."""

from django.contrib import admin, messages
from django.db.models import Count
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from ragapp.documents.forms import DocumentUploadForm
from ragapp.documents.models import Chunk, Collection, Document
from ragapp.documents.selectors import collection_readable_by
from ragapp.documents.services import document_create, document_delete, document_reingest

CHUNKS_SHOWN_ON_DOCUMENT_PAGE = 100


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ["name", "language", "document_count", "reranking_enabled", "created_at"]
    # Listed, so that the language keeps its place when it turns read-only.
    fields = ["name", "slug", "language", "dense_weight", "reranking_enabled", "rerank_fusion_weight", "readers", "reader_groups"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["readers", "reader_groups"]
    search_fields = ["name"]

    def get_readonly_fields(self, request, collection=None):
        # Chunks keep the language they were indexed in: a new one would read questions differently
        # from the stored text, and full-text recall would drop without a word (the help text says so).
        if collection is not None and collection.documents.exists():
            return [*super().get_readonly_fields(request, collection), "language"]
        return super().get_readonly_fields(request, collection)

    def get_queryset(self, request):
        # Staff who are not superusers see only the collections they may read (the same rule as search).
        readable = super().get_queryset(request).filter(pk__in=collection_readable_by(user=request.user).values("pk"))
        return readable.annotate(number_of_documents=Count("documents"))

    @admin.display(description="Documents", ordering="number_of_documents")
    def document_count(self, collection):
        return collection.number_of_documents


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["title", "collection", "status_badge", "progress_bar", "chunk_count", "failure_reason", "created_at"]
    list_filter = ["status", ("collection", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["title", "original_filename"]
    actions = ["reingest_selected", "delete_selected_documents"]
    readonly_fields = [
        "collection", "original_file", "content_type", "size_bytes", "sha256", "status",
        "progress", "error", "chunk_count", "uploaded_by", "created_at", "updated_at", "ingested_at", "chunk_list",
    ]
    fields = ["title"] + readonly_fields

    def get_queryset(self, request):
        return super().get_queryset(request).filter(collection__in=collection_readable_by(user=request.user).values("pk"))

    def get_urls(self):
        upload = path("upload/", self.admin_site.admin_view(self.upload_view), name="documents_document_upload")
        return [upload] + super().get_urls()

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # ours also removes the stored files
        return actions

    def add_view(self, request, form_url="", extra_context=None):
        return redirect("admin:documents_document_upload")

    def upload_view(self, request):
        """Upload one or many files into a collection; ingestion runs in the background."""
        form = DocumentUploadForm(request.POST or None, request.FILES or None, collections=collection_readable_by(user=request.user))
        if request.method == "POST" and form.is_valid():
            for file in form.cleaned_data["files"]:
                self._create_from_upload(request, form.cleaned_data["collection"], file)
            return redirect("admin:documents_document_changelist")
        context = {**self.admin_site.each_context(request), "form": form, "opts": self.model._meta,
                   "title": "Upload documents"}
        return TemplateResponse(request, "admin/documents/document/upload.html", context)

    def _create_from_upload(self, request, collection, file):
        document, created = document_create(collection=collection, file=file, uploaded_by=request.user)
        if not created:
            # Quoted: the admin capitalises a message's first letter, which would change the name.
            self.message_user(request, f"“{file.name}” is already in {collection} as “{document.title}”; not stored twice.", messages.WARNING)
        elif document.status == Document.Status.FAILED:
            self.message_user(request, f"“{file.name}”: {document.error}", messages.ERROR)
        else:
            self.message_user(request, f"“{file.name}” queued for ingestion.", messages.SUCCESS)

    def delete_model(self, request, document):
        document_delete(document=document)

    @admin.action(description="Re-ingest selected documents")
    def reingest_selected(self, request, queryset):
        refused = [document.original_filename for document in queryset if not document_reingest(document=document)]
        queued = queryset.count() - len(refused)
        if queued:
            self.message_user(request, f"{queued} document(s) queued for re-ingestion.", messages.SUCCESS)
        if refused:
            self.message_user(request, (
                f"Not re-ingested: {', '.join(refused)}. Their files were refused at upload, so nothing was kept to "
                "read again: upload them again (a new upload of the same name replaces the refused entry)."
            ), messages.WARNING)

    @admin.action(description="Delete selected documents and their chunks", permissions=["delete"])
    def delete_selected_documents(self, request, queryset):
        count = 0
        for document in queryset:
            document_delete(document=document)
            count += 1
        self.message_user(request, f"Deleted {count} document(s).", messages.SUCCESS)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, document):
        return format_html('<span class="doc-status doc-status-{}">{}</span>', document.status, document.get_status_display())

    @admin.display(description="Progress", ordering="progress")
    def progress_bar(self, document):
        return format_html('<progress max="100" value="{}" title="{}%">{}%</progress>', document.progress, document.progress, document.progress)

    @admin.display(description="Error")
    def failure_reason(self, document):
        return Truncator(document.error).chars(160)

    @admin.display(description="Original file")
    def original_file(self, document):
        if not document.file:
            return document.original_filename
        return format_html('<a href="{}">{}</a>', reverse("document_file", args=[document.pk]), document.original_filename)

    @admin.display(description="Chunks")
    def chunk_list(self, document):
        chunks = document.chunks.order_by("ordinal")[:CHUNKS_SHOWN_ON_DOCUMENT_PAGE]
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((c.ordinal, c.page or "", " › ".join(c.heading_path), c.token_count, Truncator(c.text).chars(300)) for c in chunks),
        )
        more = reverse("admin:documents_chunk_changelist") + f"?document__id__exact={document.pk}"
        return format_html(
            '<table><thead><tr><th>#</th><th>Page</th><th>Headings</th><th>Tokens</th><th>Text</th></tr></thead>'
            '<tbody>{}</tbody></table><p><a href="{}">All {} chunks</a></p>', rows, more, document.chunk_count,
        )


@admin.register(Chunk)
class ChunkAdmin(admin.ModelAdmin):
    list_display = ["document", "ordinal", "page", "token_count", "excerpt"]
    list_filter = [("collection", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["text"]
    list_select_related = ["document"]
    fields = ["document", "ordinal", "page", "heading_path", "char_start", "char_end", "token_count", "text"]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).filter(collection__in=collection_readable_by(user=request.user).values("pk"))

    def has_add_permission(self, request):
        return False  # chunks come from ingestion only

    def has_change_permission(self, request, chunk=None):
        return False

    @admin.display(description="Text")
    def excerpt(self, chunk):
        return Truncator(chunk.text).chars(200)
