"""Build a benchmark corpus of real documentation text, parsed and chunked as ingestion does, up to --chunks chunks.

Why: bench/retrieval.py's synthetic collections repeat ~4,000 SciFact chunk texts, so a 100k collection copies one
set of lexeme statistics 25 times. Full-text search, and the top-k pruning planned for it (WAND, MaxScore,
impact-ordered postings), behave differently on a real corpus, whose vocabulary keeps growing with its size and
whose document frequencies spread out.

Where the text comes from: the Debian documentation packages of DOC_PACKAGES, fetched with `apt-get download`,
unpacked with `dpkg-deb -x` and cached; each HTML, Markdown or plain-text file is parsed by
ragapp.documents.parsing and chunked by ragapp.documents.chunking with the settings' budget (bench/common.py's
chunk_drafts, the path SciFact takes in the other benchmarks). Documents are drawn one at a time from a package
picked with probability proportional to its unread bytes, so any prefix of the corpus samples the packages in
proportion to their size. Files and chunks seen before (byte for byte) are dropped. When the packages run out
before --chunks, the rest is text drawn from a word model fitted on the real part (the real words' own Zipf
frequencies, with new words arriving as fast as Heaps' law fitted on the real vocabulary growth says) and chunked
the same way; the profile says how many chunks that is.

Output, git-ignored: bench/.cache/corpus/chunks-N-seedS-HASH.jsonl.gz, one JSON object per chunk (see corpus_read),
written as it goes, with deterministic bytes for given options and package versions. Its profile (sizes,
vocabulary and document frequencies as PostgreSQL's english to_tsvector sees them, beside SciFact's, and per
package the chunks it gave and would give if read whole) goes to bench/results/corpus.json.
"""

import argparse
import contextlib
import fnmatch
import gzip
import hashlib
import io
import json
import math
import multiprocessing
import re
import shutil
import subprocess
import time
import warnings
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import CACHE_DIR, abstract_text, chunk_drafts, django_setup, results_write, scifact_abstracts, scifact_path

FORMAT = "ragapp-bench-corpus/1"  # in the output's name hash: a change of line format makes a new file


@dataclass(frozen=True)
class DocPackage:
    """A Debian package and which of its files are documents (fnmatch patterns on the path inside the package)."""

    name: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()


# Chosen by size (apt-cache show: Installed-Size) and by prose: manuals, guides and API references in English.
# Translations are left out (the profile is english to_tsvector's), and so are generated copies of other files.
DOC_PACKAGES = (
    # The Python language and library reference, tutorial and HOWTOs: prose with code examples.
    DocPackage("python3.11-doc", ("usr/share/doc/python3.11/html/*",)),
    # The Linux kernel's guides (admin, drivers, networking, filesystems): long technical prose.
    DocPackage("linux-doc-6.1", ("usr/share/doc/linux-doc-6.1/html/*",)),
    # PostgreSQL's manual: the database this app runs on.
    DocPackage("postgresql-doc-15", ("usr/share/doc/postgresql-doc-15/html/*",)),
    # The Debian Administrator's Handbook, a book; English only (it ships ~20 translations).
    DocPackage("debian-handbook", ("usr/share/doc/debian-handbook/html/en-US/*",)),
    # Django's documentation: topics, how-tos, reference and release notes.
    DocPackage("python-django-doc", ("usr/share/doc/python-django-doc/html/*",)),
    # Erlang/OTP's user guides and module references; the wx binding's generated pages are 60% of its bytes.
    DocPackage("erlang-doc", ("usr/share/doc/erlang-doc/*",), ("*/lib/wx-*",)),
    # The Java class library's reference (javadoc): a description per class and method.
    DocPackage("openjdk-17-doc", ("usr/share/doc/openjdk-17-jre-headless/api/*",)),
    # The Rust books and the std reference; core and alloc are left out, std re-exports their pages.
    DocPackage("rust-doc", ("usr/share/doc/rust-doc/html/*",), ("*/html/core/*", "*/html/alloc/*")),
    # Git's manual pages and guides as HTML (the .txt files are their AsciiDoc sources).
    DocPackage("git-doc", ("usr/share/doc/git-doc/*.html",)),
    # The Apache HTTP server's manual, English pages only.
    DocPackage("apache2-doc", ("usr/share/doc/apache2-doc/manual/en/*",)),
    # CMake's reference: one short page per command, variable, property and module.
    DocPackage("cmake-doc", ("usr/share/doc/cmake-data/html/*",)),
    # Sphinx's documentation.
    DocPackage("sphinx-doc", ("usr/share/doc/sphinx-doc/html/*",)),
    # SQLAlchemy's documentation: ORM and Core guides, changelogs.
    DocPackage("python-sqlalchemy-doc", ("usr/share/doc/python-sqlalchemy-doc/html/*",)),
    # Node.js's API reference (all.html repeats every other page; the .md files repeat the HTML).
    DocPackage("nodejs-doc", ("usr/share/doc/nodejs/api/*.html",), ("*/all.html",)),
    # pandas' user guide and API reference.
    DocPackage("python-pandas-doc", ("usr/share/doc/python-pandas-doc/html/*",)),
    # SciPy's tutorial and API reference.
    DocPackage("python-scipy-doc", ("usr/share/doc/python-scipy-doc/html/*",)),
    # The GHC user's guide and the Haskell libraries' reference (haddock).
    DocPackage("ghc-doc", ("usr/share/doc/ghc-doc/html/*",)),
    # Racket's guides and references.
    DocPackage("racket-doc", ("usr/share/doc/racket/*",)),
    # LilyPond's manuals: notation, learning, usage, internals, glossary.
    DocPackage("lilypond-doc-html", ("usr/share/doc/lilypond/html/*",)),
    # LibreOffice's help pages, English.
    DocPackage("libreoffice-help-en-us", ("usr/share/libreoffice/help/en-US/*",)),
    # GNU Octave's manual.
    DocPackage("octave-doc", ("usr/share/doc/octave/*.html/*",)),
    # gnuplot's manual, one page per command.
    DocPackage("gnuplot-doc", ("usr/share/doc/gnuplot/htmldocs/*",)),
    # The Advanced Bash-Scripting Guide, a book.
    DocPackage("abs-guide", ("usr/share/doc/abs-guide/html/*",)),
    # Securing Debian, a manual; English only.
    DocPackage("harden-doc", ("usr/share/doc/harden-doc/html/en-US/*",)),
    # Debian Policy, the Developer's Reference and the Debian Reference: Debian's own manuals.
    DocPackage("debian-policy", ("usr/share/doc/debian-policy/*",)),
    DocPackage("developers-reference", ("usr/share/developers-reference/*",)),
    DocPackage("debian-reference-en", ("usr/share/debian-reference/*",)),
    # Postfix's and Exim's manuals: mail server configuration.
    DocPackage("postfix-doc", ("usr/share/doc/postfix/html/*",)),
    DocPackage("exim4-doc-html", ("usr/share/doc/exim4-doc-html/*",)),
    # SageMath's tutorials, thematic guides and reference, English (the largest prose-and-API set here).
    DocPackage("sagemath-doc", ("usr/share/doc/sagemath/html/en/*",)),
    # The Scala standard library's and compiler's reference (scaladoc).
    DocPackage("scala-doc", ("usr/share/doc/scala-2.11/api/*",)),
    # Qt 5's class reference and overviews: long descriptive prose per class.
    DocPackage("qtbase5-doc-html", ("usr/share/qt5/doc/*",)),
    # OpenCV's tutorials and reference (doxygen).
    DocPackage("opencv-doc", ("usr/share/doc/opencv-doc/opencv4/html/*",)),
    # The C++ standard library's reference (doxygen) and the libstdc++ manual.
    DocPackage("libstdc++-12-doc", ("usr/share/doc/gcc-12-base/libstdc++/*",)),
    # Python scientific libraries' guides, worked examples and references.
    DocPackage("python-statsmodels-doc", ("usr/share/doc/python-statsmodels-doc/html/*",)),
    DocPackage("python-astropy-doc", ("usr/share/doc/python-astropy-doc/html/*",)),
    DocPackage("python-sklearn-doc", ("usr/share/doc/python-sklearn-doc/html/*",)),
    DocPackage("python-sympy-doc", ("usr/share/doc/python-sympy-doc/html/*",)),
    DocPackage("python-dask-doc", ("usr/share/doc/python-dask-doc/html/*",)),
    DocPackage("python-skimage-doc", ("usr/share/doc/python-skimage-doc/html/*",)),
    DocPackage("python-xarray-doc", ("usr/share/doc/python-xarray-doc/html/*",)),
    # Biopython's tutorial and cookbook (HTML; the .txt and .tex files repeat it).
    DocPackage("python-biopython-doc", ("usr/share/doc/python-biopython-doc/Doc/*.html",)),
    # Celery's and the OpenStack client's guides and references.
    DocPackage("python-celery-doc", ("usr/share/doc/python-celery-doc/html/*",)),
    DocPackage("python-openstackclient-doc", ("usr/share/doc/python-openstackclient-doc/html/*",)),
    # FFmpeg's manuals and its libraries' reference.
    DocPackage("ffmpeg-doc", ("usr/share/doc/ffmpeg/*",)),
    # ImageMagick's web pages: command-line options and usage, with examples.
    DocPackage("imagemagick-6-doc", ("usr/share/doc/imagemagick-6-common/html/*",)),
    # End-user manuals: the GIMP, GnuCash (English), KiCad (English), Wireshark.
    DocPackage("gimp-help-en", ("usr/share/gimp/2.0/help/en/*",)),
    DocPackage("gnucash-docs", ("usr/share/doc/gnucash-docs/gnucash-*-en/*",)),
    DocPackage("kicad-doc-en", ("usr/share/doc/kicad/help/en/*",)),
    DocPackage("wireshark-doc", ("usr/share/doc/wireshark/*",)),
    # Vim's help files as HTML, zsh's and Maxima's manuals.
    DocPackage("vim-doc", ("usr/share/doc/vim/html/*",)),
    DocPackage("zsh-doc", ("usr/share/doc/zsh-common/html/*",)),
    DocPackage("maxima-doc", ("usr/share/doc/maxima-doc/html/*",)),
    # Debian's installation guide, English; BIND's, rsyslog's and GnuTLS's manuals.
    DocPackage("installation-guide-amd64", ("usr/share/doc/installation-guide-amd64/en/*",)),
    DocPackage("bind9-doc", ("usr/share/doc/bind9-doc/arm/*",)),
    DocPackage("rsyslog-doc", ("usr/share/doc/rsyslog-doc/html/*",)),
    DocPackage("gnutls-doc", ("usr/share/doc/gnutls-doc/*",)),
    # Boost's library documentation: long design and usage prose.
    DocPackage("libboost1.74-doc", ("usr/share/doc/libboost1.74-doc/doc/*",)),
    # Qt Quick/QML and Qt Multimedia: the rest of Qt 5's reference beside qtbase.
    DocPackage("qtdeclarative5-doc-html", ("usr/share/qt5/doc/*",)),
    DocPackage("qtmultimedia5-doc-html", ("usr/share/qt5/doc/*",)),
    # Groovy's reference (javadoc; gapi/ repeats the same classes as groovydoc).
    DocPackage("groovy-doc", ("usr/share/doc/groovy/api/*",)),
    # GTK's and GLib's references (gtk-doc).
    DocPackage("libgtk-3-doc", ("usr/share/gtk-doc/html/*",)),
    DocPackage("libglib2.0-doc", ("usr/share/gtk-doc/html/*",)),
    # Server manuals: HAProxy, PostGIS, Varnish (HTML; their .txt files repeat it).
    DocPackage("haproxy-doc", ("usr/share/doc/haproxy/html/*",)),
    DocPackage("postgis-doc", ("usr/share/doc/postgis-doc/*.html",)),
    DocPackage("varnish-doc", ("usr/share/doc/varnish/html/*",)),
    # Docutils' documentation as HTML; Python libraries' guides and references; SWI-Prolog's manual.
    DocPackage("docutils-doc", ("usr/share/doc/docutils-doc/*.html",)),
    DocPackage("python-lxml-doc", ("usr/share/doc/python-lxml/html/*",)),
    DocPackage("python-tornado-doc", ("usr/share/doc/python-tornado-doc/html/*",)),
    DocPackage("python-werkzeug-doc", ("usr/share/doc/python-werkzeug-doc/html/*",)),
    DocPackage("python-flask-doc", ("usr/share/doc/python-flask-doc/html/*",)),
    DocPackage("python-hypothesis-doc", ("usr/share/doc/python-hypothesis-doc/html/*",)),
    DocPackage("python-gevent-doc", ("usr/share/doc/python-gevent-doc/html/*",)),
    DocPackage("swi-prolog-doc", ("usr/share/swi-prolog/doc/*",)),
)
DOCUMENT_SUFFIXES = (".html", ".htm", ".txt", ".md")
# Generated pages that repeat other pages or hold no prose: sources behind Sphinx pages, highlighted code,
# indexes, search pages, licences and changelogs.
EXCLUDED_EVERYWHERE = (
    "*/_sources/*", "*/_modules/*", "*/_static/*", "*/_images/*", "*/src/*", "*/index-files/*", "*/genindex*",
    "*/search.html", "*/py-modindex.html", "*/copyright", "*changelog*",
)
MAX_DOCUMENT_BYTES = 8 * 2**20  # the few larger files here are generated: source listings, a general index


def options_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build a benchmark corpus of real text: Debian documentation packages parsed and chunked as "
                    "ingestion does, topped up from a Zipf/Heaps word model fitted on it only if they run out. "
                    "Writes gzipped JSON lines to bench/.cache/corpus/ and its vocabulary profile, beside "
                    "SciFact's, to bench/results/.",
    )
    parser.add_argument("--chunks", type=int, default=1_000_000,
                        help="Chunks to write; the build stops there (default: 1000000).")
    parser.add_argument("--seed", type=int, default=0,
                        help="Random seed: the order documents are drawn in and the top-up text (default: 0). "
                             "The same options and package versions give the same bytes.")
    parser.add_argument("--packages", default="",
                        help="Comma-separated names from DOC_PACKAGES to read (default: all of them).")
    parser.add_argument("--workers", type=int, default=1,
                        help="Processes that parse and chunk documents; the output does not depend on it "
                             "(default: 1).")
    parser.add_argument("--cache", type=Path, default=CACHE_DIR / "corpus",
                        help="Folder for downloaded packages, their unpacked files and the corpus "
                             "(default: bench/.cache/corpus).")
    parser.add_argument("--rebuild", action="store_true",
                        help="Build the corpus again even when a complete one for these options is cached.")
    parser.add_argument("--skip-profile", action="store_true",
                        help="Build only; skip the vocabulary profile (which starts PostgreSQL).")
    parser.add_argument("--scifact", help="BEIR SciFact folder, profiled for comparison "
                                          "(default: $SCIFACT_DIR or ../shared/data/scifact).")
    parser.add_argument("--output", default="corpus",
                        help="Name of the results file under bench/results/ (default: corpus).")
    options = parser.parse_args(argv)
    known = {package.name: package for package in DOC_PACKAGES}
    names = [name.strip() for name in options.packages.split(",") if name.strip()] or list(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"--packages: {', '.join(unknown)} not in DOC_PACKAGES (add it there, with its file patterns)")
    options.packages = [known[name] for name in names]
    if options.chunks < 1 or options.workers < 1:
        parser.error("--chunks and --workers must be at least 1")
    return options


def corpus_read(path: Path) -> Iterator[dict]:
    """Yield the corpus's chunks: {"chunk", "document", "source" ("debian" or "zipf"), "tokens", "text"}."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


# ---- the packages ------------------------------------------------------------------------------

class PackageUnavailable(Exception):
    """A package could not be downloaded or unpacked; the message says why."""


def package_fetch(package: DocPackage, cache: Path) -> tuple[Path, str]:
    """Download and unpack the package once; return its unpacked folder and the .deb's file name (its version)."""
    root = cache / "unpacked" / package.name
    marker = root / ".unpacked-from"
    if marker.exists():
        return root, marker.read_text()
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = _deb_find(debs, package.name) or _deb_download(debs, package.name)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)  # dpkg-deb -x creates the last folder only
    _run(["dpkg-deb", "-x", str(deb), str(root)], what=f"unpacking {deb.name}")
    marker.write_text(deb.name)
    return root, deb.name


def _deb_find(folder: Path, name: str) -> Path | None:
    found = sorted(folder.glob(f"{name}_*.deb"))
    return found[-1] if found else None


def _deb_download(folder: Path, name: str) -> Path:
    _run(["apt-get", "download", "-q", name], what=f"apt-get download {name} (run `apt-get update` first?)", cwd=folder)
    deb = _deb_find(folder, name)
    if deb is None:
        raise PackageUnavailable(f"apt-get download {name} left no .deb in {folder}")
    return deb


def _run(command: list[str], *, what: str, cwd: Path | None = None) -> None:
    try:
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        raise PackageUnavailable(f"{what} failed: {detail.strip().splitlines()[-1] if detail.strip() else error}")


def package_documents(package: DocPackage, root: Path) -> list[tuple[str, int]]:
    """Return (path inside the package, bytes on disk) of its documents, sorted by path."""
    documents = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink() or not path.is_file() or not _is_document(package, relative):
            continue
        size = path.stat().st_size
        if 0 < size <= MAX_DOCUMENT_BYTES:
            documents.append((relative, size))
    return documents


def _is_document(package: DocPackage, relative: str) -> bool:
    name = relative.removesuffix(".gz")
    if not name.lower().endswith(DOCUMENT_SUFFIXES):
        return False
    if not any(fnmatch.fnmatchcase(relative, pattern) for pattern in package.include):
        return False
    return not any(fnmatch.fnmatchcase(relative, pattern) for pattern in package.exclude + EXCLUDED_EVERYWHERE)


def documents_drawn(listings: dict[str, list[tuple[str, int]]], rng: np.random.Generator) -> Iterator[tuple[str, str]]:
    """Yield (package, path) one at a time, from a package drawn with probability proportional to its unread bytes."""
    names = list(listings)
    queues = [[listings[name][index] for index in rng.permutation(len(listings[name]))] for name in names]
    unread = np.array([sum(size for _, size in queue) for queue in queues], dtype=np.float64)
    while unread.sum() > 0:
        picked = int(rng.choice(len(names), p=unread / unread.sum()))
        relative, size = queues[picked].pop()
        unread[picked] = unread[picked] - size if queues[picked] else 0.0
        yield names[picked], relative


# ---- parsing and chunking, in worker processes ---------------------------------------------------

def worker_start() -> None:
    """Start Django, and quiet BeautifulSoup's warning about XHTML pages (ingestion parses them as HTML on purpose)."""
    from bs4 import XMLParsedAsHTMLWarning

    warnings.filterwarnings("ignore", category=XMLParsedAsHTMLWarning)
    django_setup()


def document_chunked(item: tuple[str, bytes]) -> tuple[list[tuple[str, int]], str]:
    """Parse and chunk one document's bytes; return ((text, tokens) per chunk, the reason it failed or '')."""
    from ragapp.documents.errors import DocumentError

    filename, data = item
    try:
        return [(draft.text, draft.token_count) for draft in chunk_drafts(data, filename=filename)], ""
    except DocumentError as error:
        return [], f"{type(error).__name__}: {str(error).split(':')[0]}"


def chunked_in_order(items: Iterable[tuple[tuple, tuple[str, bytes]]], workers: int) -> Iterator[tuple[tuple, tuple]]:
    """Yield (key, document_chunked(item)) in the items' order, chunking in `workers` processes (this one when 1)."""
    if workers == 1:
        for key, item in items:
            yield key, document_chunked(item)
        return
    # spawn: this process may hold torch's and the tokenizer's threads, which a fork would copy half-made.
    with multiprocessing.get_context("spawn").Pool(workers, initializer=worker_start) as pool:
        pending = deque()
        for key, item in items:
            pending.append((key, pool.apply_async(document_chunked, (item,))))
            if len(pending) >= 4 * workers:  # a few documents ahead, not the whole package set in memory
                key, result = pending.popleft()
                yield key, result.get()
        while pending:
            key, result = pending.popleft()
            yield key, result.get()


# ---- the build ---------------------------------------------------------------------------------

@dataclass
class PackageTally:
    """What one package gave: documents read (duplicates aside), chunks kept, what was dropped or failed."""

    deb: str = ""
    documents_available: int = 0
    bytes_available: int = 0
    documents_read: int = 0
    bytes_read: int = 0
    documents_duplicate: int = 0
    documents_failed: int = 0
    failures: Counter = field(default_factory=Counter)
    chunks: int = 0
    chunks_duplicate: int = 0
    tokens: int = 0

    def summary(self) -> dict:
        read_share = self.bytes_read / self.bytes_available if self.bytes_available else 0.0
        return {
            "deb": self.deb, "documents_available": self.documents_available,
            "megabytes_available": round(self.bytes_available / 1e6, 2), "documents_read": self.documents_read,
            "megabytes_read": round(self.bytes_read / 1e6, 2), "documents_duplicate": self.documents_duplicate,
            "documents_failed": self.documents_failed, "failures": dict(self.failures.most_common(5)),
            "chunks": self.chunks, "chunks_duplicate": self.chunks_duplicate,
            "tokens_per_chunk": round(self.tokens / self.chunks, 1) if self.chunks else None,
            "chunks_per_megabyte": round(self.chunks / (self.bytes_read / 1e6), 1) if self.bytes_read else None,
            # What the whole package would give at the rate measured on the part read (None: nothing read yet).
            "chunks_if_read_whole": round(self.chunks / read_share) if read_share else None,
        }


class WordTally:
    """The real part's word counts and vocabulary growth, which the top-up's word model is fitted on."""

    WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.words = 0
        self.growth: list[tuple[int, int]] = []  # (words seen, distinct words) at geometric steps
        self._next_checkpoint = 1000

    def add(self, text: str) -> None:
        words = self.WORD.findall(text.lower())
        self.counts.update(words)
        self.words += len(words)
        if self.words >= self._next_checkpoint:
            self.growth.append((self.words, len(self.counts)))
            self._next_checkpoint = math.ceil(self.words * 1.25)


class ChunkWriter:
    """Write chunks as gzipped JSON lines with fixed bytes (no time or name in the gzip header), dropping repeats."""

    def __init__(self, path: Path):
        self._raw = path.open("wb")
        self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
        self._text = io.TextIOWrapper(self._gzip, encoding="utf-8", newline="\n")
        self._seen: set[bytes] = set()
        self.written = 0
        self.documents = 0

    def write(self, document: str, source: str, chunks: list[tuple[str, int]], limit: int) -> tuple[list, int]:
        """Write the document's new chunks, up to `limit` chunks in all; return (those written, duplicates)."""
        written, duplicates = [], 0
        for text, tokens in chunks:
            if self.written >= limit:
                break
            digest = hashlib.blake2b(text.encode("utf-8"), digest_size=12).digest()
            if digest in self._seen:
                duplicates += 1
                continue
            self._seen.add(digest)
            line = {"chunk": self.written, "document": document, "source": source, "tokens": tokens, "text": text}
            self._text.write(json.dumps(line, ensure_ascii=False) + "\n")
            self.written += 1
            written.append((text, tokens))
        self.documents += bool(written)
        return written, duplicates

    def close(self) -> None:
        self._text.close()
        self._raw.close()


def output_path(options) -> Path:
    """The corpus's file: its name holds the chunk count, the seed and a hash of what else shapes the bytes."""
    from django.conf import settings

    from ragapp.documents.embedding import embedding_model_label

    shaping = json.dumps([FORMAT, [package.__dict__ for package in options.packages], EXCLUDED_EVERYWHERE,
                          DOCUMENT_SUFFIXES, MAX_DOCUMENT_BYTES, settings.CHUNK_TOKENS,
                          settings.CHUNK_OVERLAP_TOKENS, embedding_model_label()], sort_keys=True, default=list)
    digest = hashlib.sha256(shaping.encode()).hexdigest()[:8]
    return options.cache / f"chunks-{options.chunks}-seed{options.seed}-{digest}.jsonl.gz"


def corpus_build(options, path: Path) -> dict:
    """Write the corpus to `path` (through a .part file); return what each package gave and the top-up."""
    from tqdm import tqdm

    rng = np.random.default_rng(options.seed)
    tallies, listings, skipped = packages_prepare(options.packages, options.cache)
    part = path.with_name(path.name + ".part")
    writer, words = ChunkWriter(part), WordTally()
    start = time.perf_counter()
    with tqdm(total=options.chunks, desc="Chunks", unit="chunk", mininterval=2) as bar:
        documents = real_documents(listings, options.cache, tallies, rng)
        # closing: stopping at the target ends the worker processes now, not when the generator is collected.
        with contextlib.closing(chunked_in_order(documents, options.workers)) as results:
            for (package, relative, size), (chunks, failure) in results:
                tally_document(tallies[package], size, failure)
                if not failure:
                    written, duplicates = writer.write(f"{package}:{relative}", "debian", chunks, options.chunks)
                    tally_chunks(tallies[package], words, written, duplicates)
                    bar.update(len(written))
                if writer.written >= options.chunks:
                    break
        real_seconds, real_chunks = time.perf_counter() - start, writer.written
        top_up = top_up_write(writer, words, options.chunks, rng, bar) if writer.written < options.chunks else None
    writer.close()
    part.replace(path)
    return {"packages": {name: tally.summary() for name, tally in tallies.items()}, "packages_skipped": skipped,
            "documents": writer.documents, "real_chunks": real_chunks, "real_seconds": round(real_seconds, 1),
            "real_seconds_per_10k_chunks": round(1e4 * real_seconds / real_chunks, 1) if real_chunks else None,
            "top_up": top_up, "seconds": round(time.perf_counter() - start, 1)}


def tally_document(tally: "PackageTally", size: int, failure: str) -> None:
    tally.documents_read += 1
    tally.bytes_read += size
    if failure:
        tally.documents_failed += 1
        tally.failures[failure] += 1


def tally_chunks(tally: "PackageTally", words: "WordTally", written: list[tuple[str, int]], duplicates: int) -> None:
    """Count the document's chunks written and dropped; the word model learns from those written."""
    tally.chunks += len(written)
    tally.chunks_duplicate += duplicates
    for text, tokens in written:
        tally.tokens += tokens
        words.add(text)


def packages_prepare(packages: list[DocPackage], cache: Path) -> tuple[dict, dict, dict]:
    """Fetch and list each package; return tallies, document listings, and {name: why} for those skipped."""
    from tqdm import tqdm

    tallies, listings, skipped = {}, {}, {}
    for package in tqdm(packages, desc="Packages (downloaded and unpacked once)", unit="package"):
        try:
            root, deb = package_fetch(package, cache)
        except PackageUnavailable as error:
            skipped[package.name] = str(error)
            continue
        documents = package_documents(package, root)
        if not documents:
            skipped[package.name] = "no documents match its patterns"
            continue
        listings[package.name] = documents
        tallies[package.name] = PackageTally(deb=deb, documents_available=len(documents),
                                             bytes_available=sum(size for _, size in documents))
    for name, reason in skipped.items():
        print(f"Skipped {name}: {reason}")
    return tallies, listings, skipped


def real_documents(listings, cache: Path, tallies: dict, rng) -> Iterator[tuple[tuple[str, str, int], tuple[str, bytes]]]:
    """Yield ((package, path, bytes on disk), (file name, content)) of the documents not seen before, as drawn."""
    seen: set[bytes] = set()
    for package, relative in documents_drawn(listings, rng):
        data = (cache / "unpacked" / package / relative).read_bytes()
        key = (package, relative, len(data))
        if relative.endswith(".gz"):
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as error:
                tally_document(tallies[package], len(data), f"gzip: {error}")
                continue
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest in seen:
            tally_document(tallies[package], key[2], "")
            tallies[package].documents_duplicate += 1
            continue
        seen.add(digest)
        yield key, (relative.removesuffix(".gz").rsplit("/", 1)[-1], data)


# ---- the top-up: text from a word model fitted on the real part ----------------------------------

SYLLABLES = [consonant + vowel for consonant in "bdfgklmnprstvz" for vowel in "aeiou"]


@dataclass
class WordModel:
    """Zipf over the real words (drawn by their own counts) and Heaps' law for how fast new words arrive."""

    words: list[str]  # the real words, most frequent first
    cumulative: np.ndarray  # cumulative probability of each of them
    heaps_k: float  # distinct words after n words: heaps_k * n ** heaps_beta
    heaps_beta: float
    zipf_exponent: float  # the slope of log count on log rank: reported, the draws use the counts themselves
    words_drawn: int  # the position on Heaps' curve: real words, then drawn ones
    new_words: int = 0

    def draw(self, count: int, rng: np.random.Generator) -> list[str]:
        """Draw `count` words: as many new ones as Heaps' law adds over them, the rest real words by frequency."""
        start, end = self.words_drawn, self.words_drawn + count
        expected_new = self.heaps_k * (end ** self.heaps_beta - start ** self.heaps_beta)
        new = min(count, int(rng.poisson(expected_new)))
        drawn = [self.words[index] for index in np.searchsorted(self.cumulative, rng.random(count), side="right")]
        for position in rng.choice(count, size=new, replace=False):
            drawn[position] = pseudo_word(self.new_words)
            self.new_words += 1
        self.words_drawn = end
        return drawn


def pseudo_word(index: int) -> str:
    """A new word for the index-th new type: consonant-vowel syllables, three at least, so it reads as a word."""
    index += len(SYLLABLES) ** 2
    syllables = []
    while index:
        index, digit = divmod(index, len(SYLLABLES))
        syllables.append(SYLLABLES[digit])
    return "".join(syllables)


def word_model_fit(tally: WordTally) -> WordModel:
    """Fit Heaps' law on the real vocabulary's growth and read Zipf's law off the real counts."""
    if len(tally.growth) < 5:
        raise SystemExit("The packages gave too little text to fit a word model on: read more packages.")
    growth = np.array(tally.growth[len(tally.growth) // 3:], dtype=np.float64)  # past the first, steepest words
    heaps_beta, log_k = np.polyfit(np.log(growth[:, 0]), np.log(growth[:, 1]), 1)
    ranked = tally.counts.most_common()
    counts = np.array([count for _, count in ranked], dtype=np.float64)
    fitted = slice(9, max(10, int(np.searchsorted(-counts, -5, side="right"))))  # rank 10 to the last count of 5
    ranks = np.arange(1, len(counts) + 1, dtype=np.float64)
    zipf_slope = np.polyfit(np.log(ranks[fitted]), np.log(counts[fitted]), 1)[0] if counts[fitted].size > 2 else math.nan
    return WordModel(words=[word for word, _ in ranked], cumulative=np.cumsum(counts) / counts.sum(),
                     heaps_k=float(math.exp(log_k)), heaps_beta=float(heaps_beta), zipf_exponent=float(-zipf_slope),
                     words_drawn=tally.words)


def model_document(model: WordModel, words: int, rng: np.random.Generator) -> str:
    """A document of about `words` drawn words: sentences of 8-30 words in paragraphs of 3-7 sentences."""
    paragraphs, total = [], 0
    while total < words:
        sentences = []
        for _ in range(int(rng.integers(3, 8))):
            drawn = model.draw(int(rng.integers(8, 31)), rng)
            sentences.append(" ".join(drawn).capitalize() + ".")
            total += len(drawn)
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def top_up_write(writer: ChunkWriter, tally: WordTally, target: int, rng: np.random.Generator, bar) -> dict:
    """Fill the corpus up to `target` chunks with model documents as long as the real ones; return the model's figures."""
    model = word_model_fit(tally)
    words_per_document = max(200, round(tally.words / max(1, writer.documents)))
    start, first, document = time.perf_counter(), writer.written, 0
    while writer.written < target:
        chunks = [(draft.text, draft.token_count) for draft in chunk_drafts(model_document(model, words_per_document, rng))]
        bar.update(len(writer.write(f"zipf:{document}", "zipf", chunks, target)[0]))
        document += 1
    return {"chunks": writer.written - first, "share": round((writer.written - first) / target, 4),
            "documents": document, "words_per_document": words_per_document,
            "real_words": tally.words, "real_distinct_words": len(tally.counts),
            "heaps_k": round(model.heaps_k, 3), "heaps_beta": round(model.heaps_beta, 4),
            "zipf_exponent": round(model.zipf_exponent, 4), "new_words": model.new_words,
            "seconds": round(time.perf_counter() - start, 1)}


# ---- the profile: lexemes as PostgreSQL's english to_tsvector sees them ---------------------------

PROFILE_BATCH = 2000
DF_QUANTILES = (50, 90, 99, 99.9, 99.99)
DF_RANKS = (1, 10, 100, 1000, 10000, 100000)


def lexeme_profile(texts: Iterable[str], *, total: int | None, description: str, checkpoints: Iterable[int] = ()) -> dict:
    """Chunks, lexeme occurrences, distinct lexemes and document frequencies, batch by batch through ts_stat."""
    from django.db import connection
    from tqdm import tqdm

    connection.ensure_connection()
    raw = connection.connection
    document_frequency: Counter = Counter()
    chunks = occurrences = 0
    growth = {}
    wanted = sorted(set(checkpoints) | {1000 * 2**power for power in range(20)})
    with raw.cursor() as cursor, tqdm(total=total, desc=description, unit="chunk", mininterval=2) as bar:
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS bench_corpus_batch (text text)")
        for batch in _batches(texts, wanted):
            for lexeme, df, entries in _batch_stats(cursor, batch):
                document_frequency[lexeme] += df
                occurrences += entries
            chunks += len(batch)
            if chunks in wanted:
                growth[chunks] = len(document_frequency)
            bar.update(len(batch))
        cursor.execute("DROP TABLE bench_corpus_batch")
    growth[chunks] = len(document_frequency)
    return {"chunks": chunks, "lexeme_occurrences": occurrences, **df_summary(document_frequency, chunks),
            "distinct_lexemes_by_chunks": growth, "vocabulary_growth_exponent": growth_exponent(growth)}


def growth_exponent(growth: dict[int, int]) -> float | None:
    """Heaps' exponent of the vocabulary against chunks, fitted over the last three doublings of the corpus."""
    points = [(chunks, lexemes) for chunks, lexemes in sorted(growth.items()) if 8 * chunks >= max(growth)]
    if len(points) < 2:
        return None
    logs = np.log(np.array(points, dtype=np.float64))
    return round(float(np.polyfit(logs[:, 0], logs[:, 1], 1)[0]), 3)


def _batches(texts: Iterable[str], boundaries: list[int]) -> Iterator[list[str]]:
    """Lists of up to PROFILE_BATCH texts, cut also at each boundary (a chunk count to note the vocabulary at)."""
    batch, seen, upcoming = [], 0, iter(boundaries)
    boundary = next(upcoming)
    for text in texts:
        batch.append(text)
        seen += 1
        while boundary < seen:
            boundary = next(upcoming, math.inf)
        if len(batch) == PROFILE_BATCH or seen == boundary:
            yield batch
            batch = []
    if batch:
        yield batch


def _batch_stats(cursor, batch: list[str]) -> list[tuple[str, int, int]]:
    """(lexeme, chunks holding it, occurrences) over the batch, from to_tsvector('english') as the index builds it."""
    cursor.execute("TRUNCATE bench_corpus_batch")
    with cursor.copy("COPY bench_corpus_batch (text) FROM STDIN") as copy:
        for text in batch:
            copy.write_row((text,))
    cursor.execute("SELECT word, ndoc, nentry FROM ts_stat('SELECT to_tsvector(''english'', text) FROM bench_corpus_batch')")
    return cursor.fetchall()


def df_summary(document_frequency: Counter, chunks: int) -> dict:
    """The document-frequency profile: how many lexemes are common, the df of the commonest, quantiles."""
    values = np.sort(np.fromiter(document_frequency.values(), dtype=np.int64, count=len(document_frequency)))[::-1]
    if not values.size:
        return {"distinct_lexemes": 0}
    return {
        "distinct_lexemes": int(values.size),
        "lexemes_df_at_least_1_percent": int((values >= 0.01 * chunks).sum()),
        "lexemes_df_at_least_10_percent": int((values >= 0.10 * chunks).sum()),
        "lexemes_in_one_chunk_share": round(float((values == 1).mean()), 4),
        "df_quantiles_over_lexemes": {str(q): int(np.percentile(values, q)) for q in DF_QUANTILES},
        # The df of the lexeme at each rank, as a share of chunks: comparable between corpora of any size.
        "df_share_by_rank": {str(rank): round(float(values[rank - 1]) / chunks, 5) for rank in DF_RANKS if rank <= values.size},
        "top_lexemes": [[lexeme, df, round(df / chunks, 4)] for lexeme, df in document_frequency.most_common(20)],
    }


def corpus_profile(path: Path, *, checkpoints: Iterable[int]) -> dict:
    """The corpus's profile, with its documents and its chunks' tokens (the embedding tokenizer's) counted on the way."""
    tallies = {"documents": 0, "tokens": 0, "zipf_chunks": 0}
    last_document = None

    def texts():
        nonlocal last_document
        for chunk in corpus_read(path):
            tallies["documents"] += chunk["document"] != last_document
            tallies["tokens"] += chunk["tokens"]
            tallies["zipf_chunks"] += chunk["source"] == "zipf"
            last_document = chunk["document"]
            yield chunk["text"]

    profile = lexeme_profile(texts(), total=None, description="Profiling the corpus", checkpoints=checkpoints)
    return {**tallies, "tokens_per_chunk": round(tallies["tokens"] / max(1, profile["chunks"]), 1), **profile}


def scifact_profile(folder: Path) -> dict:
    """SciFact's profile, its abstracts chunked as ingestion does (the other benchmarks' pool)."""
    records = scifact_abstracts(folder)
    drafts = [draft for record in records for draft in chunk_drafts(abstract_text(record))]
    profile = lexeme_profile((draft.text for draft in drafts), total=len(drafts), description="Profiling SciFact")
    tokens = sum(draft.token_count for draft in drafts)
    return {"documents": len(records), "tokens": tokens, "tokens_per_chunk": round(tokens / len(drafts), 1), **profile}


# ---- the run ----------------------------------------------------------------------------------

def extrapolation(build: dict, target: int = 1_000_000) -> dict:
    """What the measured rates say about a `target`-chunk corpus from these packages."""
    packages = build["packages"].values()
    read = [package for package in packages if package["chunks_if_read_whole"] is not None]
    # A package not read at all (a small one, in a small build) counts at the rate of those read.
    rate = sum(package["chunks"] for package in read) / max(1e-9, sum(package["megabytes_read"] for package in read))
    whole = round(sum(package["chunks_if_read_whole"] if package["chunks_if_read_whole"] is not None
                      else rate * package["megabytes_available"] for package in packages))
    per_10k = build["real_seconds_per_10k_chunks"]
    return {"target_chunks": target, "chunks_if_every_package_read_whole": whole,
            "top_up_share_at_target": round(max(0.0, 1 - whole / target), 3),
            "hours_for_target_at_measured_rate": round(per_10k * target / 1e4 / 3600, 1) if per_10k else None}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def summary_print(build: dict, profiles: dict) -> None:
    print(f"\n{'package':<28}{'chunks':>8}{'repeats':>9}{'chunks/MB':>11}{'tokens/chunk':>14}{'failed docs':>13}"
          f"{'if read whole':>15}")
    for name, package in build["packages"].items():
        print(f"{name:<28}{package['chunks']:>8}{package['chunks_duplicate']:>9}{package['chunks_per_megabyte'] or 0:>11.1f}"
              f"{package['tokens_per_chunk'] or 0:>14.1f}{package['documents_failed']:>13}"
              f"{package['chunks_if_read_whole'] or 0:>15}")
    top_up, ahead = build["top_up"], extrapolation(build)
    print(f"read whole, these packages would give about {ahead['chunks_if_every_package_read_whole']} chunks")
    print(f"real chunks {build['real_chunks']} in {build['real_seconds']} s "
          f"({build['real_seconds_per_10k_chunks']} s per 10k); top-up: {top_up['chunks'] if top_up else 0} chunks")
    if not profiles:
        return
    print(f"\n{'':<10}{'chunks':>9}{'docs':>8}{'tokens':>12}{'lexemes':>10}{'df>=1%':>8}{'df>=10%':>8}  commonest lexemes (df share)")
    for name, profile in profiles.items():
        common = ", ".join(f"{lexeme} {share:.2f}" for lexeme, _, share in profile["top_lexemes"][:5])
        print(f"{name:<10}{profile['chunks']:>9}{profile['documents']:>8}{profile['tokens']:>12}{profile['distinct_lexemes']:>10}"
              f"{profile['lexemes_df_at_least_1_percent']:>8}{profile['lexemes_df_at_least_10_percent']:>8}  {common}")


def main(argv=None) -> None:
    options = options_parse(argv)
    worker_start()
    options.cache.mkdir(parents=True, exist_ok=True)
    path = output_path(options)
    build_file = path.with_name(path.name.removesuffix(".jsonl.gz") + ".build.json")
    if path.exists() and build_file.exists() and not options.rebuild:
        print(f"Using the corpus already built for these options: {path}")
        build = json.loads(build_file.read_text())
    else:
        build = corpus_build(options, path)
        build_file.write_text(json.dumps(build, indent=2) + "\n")
    profiles = {}
    if not options.skip_profile:
        scifact = scifact_profile(scifact_path(options.scifact))
        profiles = {"corpus": corpus_profile(path, checkpoints=[scifact["chunks"]]), "scifact": scifact}
    summary_print(build, profiles)
    parameters = {"chunks": options.chunks, "seed": options.seed, "workers": options.workers,
                  "packages": [package.name for package in options.packages],
                  "lexemes": "PostgreSQL ts_stat over to_tsvector('english', chunk text), batches of "
                             f"{PROFILE_BATCH} chunks merged", "tokens": "the embedding model's tokenizer, as chunking counts"}
    figures = {"corpus_file": str(path), "corpus_sha256": file_sha256(path), "build": build,
               "extrapolation": extrapolation(build), "profiles": profiles}
    print(f"\nWrote {path}\nand {results_write(options.output, parameters=parameters, figures=figures)}")


if __name__ == "__main__":
    main()
