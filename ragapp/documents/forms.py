from django import forms

from ragapp.documents.models import Collection


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """A file field that accepts several files from one <input multiple>."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput())
        # An empty file fails on its own at ingestion, with its reason listed, instead of refusing the others.
        kwargs.setdefault("allow_empty_file", True)
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        if isinstance(data, (list, tuple)):
            return [super(MultipleFileField, self).clean(item, initial) for item in data]
        return [super().clean(data, initial)]


class DocumentUploadForm(forms.Form):
    collection = forms.ModelChoiceField(queryset=Collection.objects.all())
    files = MultipleFileField(
        help_text="PDF, DOCX, HTML, Markdown or plain text (UTF-8). Select several files at once if you like."
    )

    def __init__(self, *args, collections=None, **kwargs):
        super().__init__(*args, **kwargs)
        if collections is not None:  # only the collections the uploader may read
            self.fields["collection"].queryset = collections
