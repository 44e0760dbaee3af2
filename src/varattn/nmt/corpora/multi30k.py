"""Multi30k task 1 German-English (Elliott et al. 2016) as the field uses it: the official tokenised files.

The dataset's own repository (github.com/multi30k/dataset) ships, in ``data/task1/tok``, every
split lowercased, punctuation-normalised and Moses-tokenised by its ``scripts/task1-tokenize.sh``:
``{split}.lc.norm.tok.{lang}``. This module fetches the German and English sides of the four splits
people report on (``train`` 29,000 pairs, ``val`` 1,014, ``test_2016_flickr`` and ``test_2017_flickr``
1,000 each), or takes them from a local copy (a directory or a .tar.gz/.zip archive), checks that
the two sides of every split have the same number of lines, and writes them unchanged, byte for
byte, as ``OUTDIR/task1/tok/{split}.lc.norm.tok.{lang}``: the layout of the repository, which the
Multi30k study (``experiments/multi30k.py --data OUTDIR``) reads.

Everything is read and checked in memory (about 4 MB) before anything is written; the files are
then written into a temporary directory beside ``OUTDIR`` and moved into place at the end, so a
failure leaves nothing behind. Archives are read member by member, never extracted.
"""

from __future__ import annotations

import os
import re
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from varattn.errors import VarattnError
from varattn.fileio import require_new_directory, staged_directory
from varattn.nmt.corpora.corpus import _decode_lines

#: the raw files of ``data/task1/tok`` in the dataset's repository (``BASE/<file name>``)
DEFAULT_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/tok"
DEFAULT_OUTDIR = "data/multi30k"
SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr")
LANGS = ("de", "en")
FILE = "{split}.lc.norm.tok.{lang}"
#: where the files go under OUTDIR (and where a local copy may hold them)
SUBDIR = ("task1", "tok")
#: pairs per split in the official release (a copy of other sizes is accepted, and reported)
OFFICIAL_PAIRS = {"train": 29000, "val": 1014, "test_2016_flickr": 1000, "test_2017_flickr": 1000}
DOWNLOAD_TIMEOUT_S = 60

#: ``fetch(url) -> bytes``; raises OSError or ValueError when it cannot
Fetch = Callable[[str], bytes]


def file_names() -> list[str]:
    """The eight files, split by split, German first."""
    return [FILE.format(split=split, lang=lang) for split in SPLITS for lang in LANGS]


# -- getting the files ---------------------------------------------------------------------------------
def fetch_url(url: str) -> bytes:
    """The body of ``url`` (urllib: http, https and file URLs)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310
        return response.read()


def download(base_url: str, fetch: Fetch | None = None, progress: bool = True) -> dict[str, bytes]:
    """Every file of ``file_names()`` from ``base_url/<name>``, in memory."""
    fetch = fetch or fetch_url
    base = base_url.rstrip("/")
    found = {}
    for name in tqdm(file_names(), desc="download", unit="file", disable=not progress):
        url = f"{base}/{name}"
        try:
            found[name] = fetch(url)
        except (OSError, ValueError) as exc:
            raise VarattnError(f"cannot download {url}: {exc}") from None
    return found


def _missing(found: dict, where: object) -> None:
    missing = [name for name in file_names() if name not in found]
    if missing:
        raise VarattnError(f"{where} does not hold the Multi30k task-1 files: missing {', '.join(missing)}")


def read_directory(path: Path) -> dict[str, bytes]:
    """The files from ``path`` itself, or from its ``task1/tok`` or ``data/task1/tok`` (a clone of the repository)."""
    candidates = [path, path.joinpath(*SUBDIR), path.joinpath("data", *SUBDIR)]
    where = next((d for d in candidates if any((d / name).is_file() for name in file_names())), path)
    found = {}
    for name in file_names():
        if (where / name).is_file():
            try:
                found[name] = (where / name).read_bytes()
            except OSError as exc:
                raise VarattnError(f"cannot read {where / name}: {exc.strerror or exc}") from None
    _missing(found, where)
    return found


def _pick(path: Path, members: list[str]) -> dict[str, str]:
    """Which archive member to read for each wanted file: the one under ``task1/tok`` when there are several."""
    wanted = set(file_names())
    by_name: dict[str, list[str]] = {}
    for member in members:
        pure = PurePosixPath(member)
        if pure.name in wanted:
            by_name.setdefault(pure.name, []).append(member)
    chosen = {}
    for name, paths in by_name.items():
        if len(paths) > 1:
            paths = [p for p in paths if PurePosixPath(p).parent.parts[-2:] == SUBDIR] or paths
        if len(paths) > 1:
            raise VarattnError(f"{path} holds several {name} ({', '.join(sorted(paths)[:3])}): "
                               f"give the {'/'.join(SUBDIR)} directory instead")
        chosen[name] = paths[0]
    return chosen


def read_archive(path: Path) -> dict[str, bytes]:
    """The files from a .tar(.gz, .bz2, .xz) or .zip archive, wherever they sit in it; nothing is extracted."""
    found = {}
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                files = [info.filename for info in archive.infolist() if not info.is_dir()]
                for name, member in _pick(path, files).items():
                    found[name] = archive.read(member)
        elif tarfile.is_tarfile(path):
            with tarfile.open(path, "r:*") as archive:
                members = {m.name: m for m in archive.getmembers() if m.isfile()}
                for name, member in _pick(path, list(members)).items():
                    handle = archive.extractfile(members[member])
                    if handle is not None:
                        found[name] = handle.read()
        else:
            raise VarattnError(f"{path} is neither a directory nor a .tar.gz or .zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
        raise VarattnError(f"{path} is not a readable archive: {exc}") from None
    _missing(found, path)
    return found


def read_local(source: str | os.PathLike[str]) -> dict[str, bytes]:
    """The files from a local copy: a directory (see ``read_directory``) or an archive (``read_archive``)."""
    path = Path(source)
    if path.is_dir():
        return read_directory(path)
    if path.is_file():
        return read_archive(path)
    raise VarattnError(f"not found: {path} (give a directory holding the task-1 files or an archive of them)")


# -- checking ------------------------------------------------------------------------------------------
def count_pairs(files: dict[str, bytes], where: object) -> dict[str, int]:
    """Lines per split, after checking that every file is UTF-8, not empty, and as long as its other side."""
    counts = {}
    for split in SPLITS:
        sizes = {}
        for lang in LANGS:
            name = FILE.format(split=split, lang=lang)
            sizes[name] = len(_decode_lines(files[name], f"{where}: {name}"))
            if sizes[name] == 0:
                raise VarattnError(f"{where}: {name} is empty")
        (de, n_de), (en, n_en) = sizes.items()
        if n_de != n_en:
            raise VarattnError(f"{where}: {de} has {n_de} lines but {en} has {n_en} (the sides must be line-aligned)")
        counts[split] = n_de
    return counts


# -- the whole preparation -----------------------------------------------------------------------------
def _is_url(text: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*://", text) is not None


def prepare(outdir: str | os.PathLike[str] = DEFAULT_OUTDIR, source: str | os.PathLike[str] | None = None,
            url: str = DEFAULT_URL, progress: bool = True, fetch: Fetch | None = None) -> dict[str, int]:
    """Write Multi30k task 1 de-en to ``outdir/task1/tok``; returns the pairs per split.

    ``source``: a local copy (directory or archive) instead of downloading from ``url`` (the
    files are ``url/<name>``; ``fetch`` replaces urllib). ``outdir`` must not exist or be empty.
    """
    out = require_new_directory(outdir)
    if source is not None:
        where: object = source
        files = read_local(source)
    else:
        if not _is_url(url):
            raise VarattnError(f"not a URL: {url!r} (for a local copy use --from PATH)")
        where = url
        files = download(url, fetch, progress)
    counts = count_pairs(files, where)
    with staged_directory(out) as work:
        tok = work.joinpath(*SUBDIR)
        tok.mkdir(parents=True)
        for name in file_names():
            with open(tok / name, "wb") as f:
                f.write(files[name])
                f.flush()
                os.fsync(f.fileno())
    return counts
