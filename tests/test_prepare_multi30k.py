"""``varattn prepare multi30k``: the official task-1 files, from a local copy or a download, offline.

The tests build a small copy in the dataset's layout (a few lines per split, German and English,
with non-ASCII text) and check that every way in gives the same OUTDIR/task1/tok, byte for byte, and
that bad input is a one-line error that leaves nothing behind.
"""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from varattn.errors import VarattnError
from varattn.nmt.corpora import multi30k
from varattn.nmt.corpora.corpus import read_parallel

from conftest import cli, one_line_error

SIZES = {"train": 7, "val": 3, "test_2016_flickr": 2, "test_2017_flickr": 4}
NAMES = [f"{split}.lc.norm.tok.{lang}" for split in SIZES for lang in ("de", "en")]


def text(split, lang, n=None):
    n = SIZES[split] if n is None else n
    word = {"de": "straße", "en": "street"}[lang]
    return "".join(f"{split} {lang} {word} {k} .\n" for k in range(n))


def copy_files(**changed):
    """The eight files by name; ``changed`` replaces (or, with None, drops) files: ``val_en=...``."""
    files = {name: text(*name.split(".lc.norm.tok.")).encode("utf-8") for name in NAMES}
    for key, value in changed.items():
        name = key.replace("_en", ".lc.norm.tok.en").replace("_de", ".lc.norm.tok.de")
        if value is None:
            del files[name]
        else:
            files[name] = value
    return files


def write_dir(path, files):
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def write_tar(path, files, prefix="dataset-master/data/task1/tok/", extra=None):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {**{prefix + n: d for n, d in files.items()}, **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_zip(path, files, prefix="multi30k/task1/tok/"):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(prefix + name, data)
    return path


def assert_prepared(out, files=None):
    """OUTDIR holds exactly task1/tok with the eight files, unchanged."""
    files = files or copy_files()
    assert [p.name for p in out.iterdir()] == ["task1"]
    assert [p.name for p in (out / "task1").iterdir()] == ["tok"]
    tok = out / "task1" / "tok"
    assert sorted(p.name for p in tok.iterdir()) == sorted(NAMES)
    for name in NAMES:
        assert (tok / name).read_bytes() == files[name], name


def no_leftovers(parent, expected):
    assert sorted(p.name for p in parent.iterdir()) == sorted(expected)


def test_from_a_directory_directly_or_under_task1_tok(tmp_path, capsys):
    flat = write_dir(tmp_path / "flat", copy_files())
    code, _, err = cli(capsys, "prepare", "multi30k", tmp_path / "out1", "--from", flat)
    assert code == 0, err
    assert_prepared(tmp_path / "out1")
    assert "train 7 pairs, val 3 pairs, test_2016_flickr 2 pairs, test_2017_flickr 4 pairs" in err
    assert "note: the official release has train 29000" in err  # this copy is not the official one

    nested = write_dir(tmp_path / "copy" / "task1" / "tok", copy_files())
    (tmp_path / "copy" / "README").write_text("not used\n")
    code, _, err = cli(capsys, "prepare", "multi30k", tmp_path / "out2", "--from", tmp_path / "copy")
    assert code == 0, err
    assert_prepared(tmp_path / "out2")
    empty = tmp_path / "empty-out"
    empty.mkdir()  # an empty OUTDIR is fine
    assert cli(capsys, "prepare", "multi30k", empty, "--from", nested)[0] == 0
    assert_prepared(empty)


def test_prepared_files_read_as_a_parallel_corpus(tmp_path):
    write_dir(tmp_path / "copy", copy_files())
    counts = multi30k.prepare(tmp_path / "out", source=tmp_path / "copy", progress=False)
    assert counts == SIZES
    tok = tmp_path / "out" / "task1" / "tok"
    for split, n in SIZES.items():  # fairseq-style prefix: PREFIX.de / PREFIX.en
        corpus = read_parallel(tok / f"{split}.lc.norm.tok.de", tok / f"{split}.lc.norm.tok.en")
        assert len(corpus.src) == len(corpus.tgt) == n
        assert corpus.src[0] == [split, "de", "straße", "0", "."]


def test_from_archives(tmp_path, capsys):
    files = copy_files()
    # a snapshot of the whole repository: task1/tok is chosen over a same-named file elsewhere
    decoy = {"dataset-master/data/task2/tok/train.lc.norm.tok.de": b"other\n",
             "dataset-master/README.md": b"readme\n"}
    tgz = write_tar(tmp_path / "dataset.tar.gz", files, extra=decoy)
    assert cli(capsys, "prepare", "multi30k", tmp_path / "from-tgz", "--from", tgz)[0] == 0
    assert_prepared(tmp_path / "from-tgz")
    flat_tar = write_tar(tmp_path / "flat.tar.gz", files, prefix="")
    assert cli(capsys, "prepare", "multi30k", tmp_path / "from-flat", "--from", flat_tar)[0] == 0
    assert_prepared(tmp_path / "from-flat")
    archive = write_zip(tmp_path / "task1.zip", files)
    assert cli(capsys, "prepare", "multi30k", tmp_path / "from-zip", "--from", archive)[0] == 0
    assert_prepared(tmp_path / "from-zip")
    # two copies with no task1/tok to tell them apart: refused, not guessed
    both = write_tar(tmp_path / "both.tar.gz", files, prefix="a/", extra={"b/train.lc.norm.tok.de": b"x\n"})
    code, _, err = cli(capsys, "prepare", "multi30k", tmp_path / "never", "--from", both)
    assert code == 2 and "holds several train.lc.norm.tok.de" in one_line_error(err)
    assert not (tmp_path / "never").exists()


def test_download_from_a_file_url_and_with_an_injected_fetch(tmp_path, capsys):
    files = copy_files()
    served = write_dir(tmp_path / "served", files)
    code, _, err = cli(capsys, "prepare", "multi30k", tmp_path / "out", "--url", served.as_uri() + "/",
                       "--no-progress")
    assert code == 0, err
    assert_prepared(tmp_path / "out")

    asked = []

    def fetch(url):
        asked.append(url)
        return files[url.rsplit("/", 1)[1]]

    counts = multi30k.prepare(tmp_path / "out2", fetch=fetch, progress=False)
    assert counts == SIZES
    assert_prepared(tmp_path / "out2")
    assert asked == [f"{multi30k.DEFAULT_URL}/{name}" for name in multi30k.file_names()]
    assert sorted(asked) == sorted(f"{multi30k.DEFAULT_URL}/{name}" for name in NAMES)


def test_failed_download_writes_nothing(tmp_path, capsys):
    served = write_dir(tmp_path / "served", copy_files(test_2017_flickr_en=None))
    code, _, err = cli(capsys, "prepare", "multi30k", tmp_path / "new" / "out", "--url", served.as_uri(),
                       "--no-progress")
    assert code == 2
    assert "cannot download file://" in one_line_error(err) and "test_2017_flickr.lc.norm.tok.en" in err

    def fetch(url):
        if url.endswith("val.lc.norm.tok.de"):
            raise OSError("connection reset")
        return b"a .\n"

    with pytest.raises(VarattnError, match="cannot download .*val.lc.norm.tok.de: connection reset"):
        multi30k.prepare(tmp_path / "new" / "out", fetch=fetch, progress=False)
    code, _, err = cli(capsys, "prepare", "multi30k", tmp_path / "out", "--url", "data/task1/tok")
    assert code == 2 and "not a URL" in one_line_error(err)
    no_leftovers(tmp_path, ["served"])  # not even OUTDIR's parent


@pytest.mark.parametrize(("changed", "message"), [
    ({"val_en": None}, "missing val.lc.norm.tok.en"),
    ({"test_2016_flickr_de": None, "test_2016_flickr_en": None},
     "missing test_2016_flickr.lc.norm.tok.de, test_2016_flickr.lc.norm.tok.en"),
    ({"train_en": text("train", "en", 6).encode()},
     "train.lc.norm.tok.de has 7 lines but train.lc.norm.tok.en has 6"),
    ({"val_de": b"ok\n\xff broken\n", "val_en": b"a\nb\n"}, "val.lc.norm.tok.de: line 2 is not valid UTF-8"),
    ({"test_2017_flickr_de": b"", "test_2017_flickr_en": b""}, "test_2017_flickr.lc.norm.tok.de is empty"),
], ids=["missing-file", "missing-split", "line-counts", "not-utf8", "empty"])
@pytest.mark.parametrize("kind", ["dir", "tgz"])
def test_bad_copy_is_a_one_line_error_and_writes_nothing(tmp_path, capsys, changed, message, kind):
    files = copy_files(**changed)
    source = write_dir(tmp_path / "copy", files) if kind == "dir" else write_tar(tmp_path / "copy.tgz", files)
    code, _, err = cli(capsys, "prepare", "multi30k", tmp_path / "new" / "out", "--from", source)
    assert code == 2
    assert message in one_line_error(err)
    no_leftovers(tmp_path, [source.name])


def test_unusable_sources_and_outdirs(tmp_path, capsys):
    (tmp_path / "junk.tgz").write_bytes(b"not an archive")
    code, _, err = cli(capsys, "prepare", "multi30k", tmp_path / "out", "--from", tmp_path / "junk.tgz")
    assert code == 2 and "neither a directory nor a .tar.gz or .zip archive" in one_line_error(err)
    (tmp_path / "cut.tgz").write_bytes(write_tar(tmp_path / "whole.tgz", copy_files()).read_bytes()[:300])
    code, _, err = cli(capsys, "prepare", "multi30k", tmp_path / "out", "--from", tmp_path / "cut.tgz")
    assert code == 2 and "cut.tgz" in one_line_error(err)
    code, _, err = cli(capsys, "prepare", "multi30k", tmp_path / "out", "--from", tmp_path / "absent")
    assert code == 2 and "not found" in one_line_error(err)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep")
    copy = write_dir(tmp_path / "copy", copy_files())
    code, _, err = cli(capsys, "prepare", "multi30k", full, "--from", copy)
    assert code == 2 and "not an empty directory" in one_line_error(err)
    assert [p.name for p in full.iterdir()] == ["x"]
    no_leftovers(tmp_path, ["junk.tgz", "cut.tgz", "whole.tgz", "full", "copy"])


def test_default_outdir_is_data_multi30k(tmp_path, capsys, monkeypatch):
    copy = write_dir(tmp_path / "copy", copy_files())
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "prepare", "multi30k", "--from", copy)[0] == 0
    assert_prepared(tmp_path / "data" / "multi30k")
    with pytest.raises(SystemExit):  # a local copy and a URL at once
        cli(capsys, "prepare", "multi30k", "x", "--from", copy, "--url", "file:///nowhere")
