"""``varattn prepare iwslt14``: fairseq's IWSLT'14 de-en preparation, on a small archive in the official layout."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading

import pytest
from sacremoses import MosesTokenizer

from varattn.cli import main
from varattn.errors import VarattnError
from varattn.nmt.corpora import iwslt14

HEADER = [
    "<url>http://www.ted.com/talks/jane_doe.html</url>",
    "<keywords>talks, science</keywords>",
    "<speaker>Jane Doe</speaker>",
    "<talkid>{talk}</talkid>",
    "<title>Jane Doe: {title}</title>",
    "<description>TED Talk Subtitles and Transcript: {title}.</description>",
]
WORDS_DE = ["das", "Haus", "ist", "groß", "und", "wir", "sehen", "den", "Baum", "heute"]
WORDS_EN = ["the", "house", "is", "big", "and", "we", "see", "the", "tree", "today"]


def sentence(words, k, n):
    return " ".join(words[(k + i) % len(words)] for i in range(n)).capitalize() + "."


def train_side(lang):
    """Two talks of parallel lines, with the cases the cleaning must catch."""
    words = WORDS_DE if lang == "de" else WORDS_EN
    lines = []
    for talk in (1, 2):
        title = "Ein Titel" if lang == "de" else "A title"
        lines += [h.format(talk=talk, title=title) for h in HEADER]
        for k in range(30):
            lines.append(sentence(words, k, 3 + k % 7))
        lines.append("Es ist's wahr." if lang == "de" else "It's true, isn't it?")  # apostrophes: &apos;
        lines.append(" ".join(["Wort"] * 176) if lang == "de" else " ".join(["word"] * 176))  # too long
        lines.append("Ja." if lang == "de" else "Yes , yes , yes , yes .")  # ratio above 1.5
        lines.append("   " if lang == "de" else "Empty on the other side.")  # empty side
    return "\n".join(lines) + "\n"


def xml_file(name, lang, n):
    words = WORDS_DE if lang == "de" else WORDS_EN
    segs = [f'<seg id="{k + 1}"> {sentence(words, k + len(name), 4 + k % 3)} </seg>' for k in range(n)]
    segs.append(f'<seg id="{n + 1}">It\u2019s {name}</seg>')
    return "\n".join(['<?xml version="1.0" encoding="UTF-8"?>', "<mteval>",
                      f'<srcset setid="{name}" srclang="{lang}">', '<doc docid="7" genre="lectures">',
                      "<url>http://www.ted.com/x</url>", "<talkid>7</talkid>", *segs, "</doc>", "</srcset>",
                      "</mteval>"]) + "\n"


TEST_SIZES = {"IWSLT14.TED.dev2010": 3, "IWSLT14.TEDX.dev2012": 2, "IWSLT14.TED.tst2010": 4,
              "IWSLT14.TED.tst2011": 1, "IWSLT14.TED.tst2012": 2}


def build_archive(path, drop=None):
    files = {f"de-en/train.tags.de-en.{lang}": train_side(lang) for lang in ("de", "en")}
    for name, n in TEST_SIZES.items():
        for lang in ("de", "en"):
            files[f"de-en/{name}.de-en.{lang}.xml"] = xml_file(name, lang, n)
    files["de-en/IWSLT14.TED.tst2013.de-en.de.xml"] = xml_file("unused", "de", 2)  # not part of the recipe
    files["de-en/README"] = "not used\n"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            if name == drop:
                continue
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return build_archive(tmp_path_factory.mktemp("iwslt") / "de-en.tgz")


@pytest.fixture(scope="module")
def prepared(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "iwslt14"
    assert main(["prepare", "iwslt14", str(archive), str(out), "--merges", "60", "--no-progress"]) == 0
    return out


def read(path):
    return path.read_text(encoding="utf-8").splitlines()


def expected_pairs():
    """The kept training pairs, computed from the construction (not from the module under test)."""
    tok = {lang: MosesTokenizer(lang=lang) for lang in ("de", "en")}
    # fairseq keeps the <speaker> line with its tags, and the title and description text without theirs
    heads = [("<speaker>Jane Doe</speaker>", "<speaker>Jane Doe</speaker>"),
             ("Jane Doe: Ein Titel", "Jane Doe: A title"),
             ("TED Talk Subtitles and Transcript: Ein Titel.", "TED Talk Subtitles and Transcript: A title.")]
    full = []
    for _talk in (1, 2):
        full += heads
        full += [(sentence(WORDS_DE, k, 3 + k % 7), sentence(WORDS_EN, k, 3 + k % 7)) for k in range(30)]
        full.append(("Es ist's wahr.", "It's true, isn't it?"))
    kept = []
    for de, en in full:
        d = tok["de"].tokenize(de, return_str=True, escape=True).lower()
        e = tok["en"].tokenize(en, return_str=True, escape=True).lower()
        n, m = len(d.split()), len(e.split())
        if n / m <= 1.5 and m / n <= 1.5:
            kept.append((d, e))
    return kept


def test_train_and_valid_splits(prepared):
    kept = expected_pairs()
    train = list(zip(read(prepared / "train.de"), read(prepared / "train.en")))
    valid = list(zip(read(prepared / "valid.de"), read(prepared / "valid.en")))
    assert valid == [p for k, p in enumerate(kept, start=1) if k % 23 == 0]
    assert train == [p for k, p in enumerate(kept, start=1) if k % 23 != 0]
    assert len(valid) == len(kept) // 23 >= 2
    text = "\n".join(read(prepared / "train.en") + read(prepared / "valid.en"))
    assert "it &apos;s true" in text  # Moses' escapes, as in the authors' files
    assert "talkid" not in text and "http" not in text and "keywords" not in text and "<title>" not in text
    assert text == text.lower()
    assert all(len(line.split()) <= 175 for line in read(prepared / "train.de"))


def test_test_set_is_the_five_xml_files_in_order(prepared):
    tok = MosesTokenizer(lang="en")
    expected = []
    for name, n in TEST_SIZES.items():
        segs = [sentence(WORDS_EN, k + len(name), 4 + k % 3) for k in range(n)] + [f"It's {name}"]
        expected += [tok.tokenize(s, return_str=True, escape=True).lower() for s in segs]
    assert read(prepared / "test.en") == expected
    assert len(read(prepared / "test.de")) == len(expected)


def test_bpe_files_are_the_plain_files_with_joint_marks(prepared):
    from subword_nmt.apply_bpe import BPE

    codes = (prepared / "bpe.codes").read_text(encoding="utf-8")
    assert len([line for line in codes.splitlines() if not line.startswith("#")]) <= 60
    bpe = BPE(io.StringIO(codes))
    marked = 0
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            plain, pieces = read(prepared / f"{split}.{lang}"), read(prepared / f"{split}.{lang}.bpe")
            assert [p.replace("@@ ", "") for p in pieces] == plain
            assert pieces == [bpe.process_line(p) for p in plain]
            marked += sum("@@ " in p for p in pieces)
    assert marked > 0
    # joint: one code file for both languages, learned on the training text of both
    from subword_nmt.learn_bpe import learn_bpe

    again = io.StringIO()
    learn_bpe(read(prepared / "train.de") + read(prepared / "train.en"), again, 60, min_frequency=2)
    assert again.getvalue() == codes


def test_download_from_a_url_gives_the_same_files(archive, prepared, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
        out = tmp_path / "from-url"
        iwslt14.prepare(url, out, merges=60, progress=False)
        missing = f"http://127.0.0.1:{server.server_address[1]}/nothing.tgz"
        with pytest.raises(VarattnError, match="cannot download"):
            iwslt14.prepare(missing, tmp_path / "never", merges=60, progress=False)
    finally:
        server.shutdown()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in prepared.iterdir())
    for path in prepared.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    assert not (tmp_path / "never").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_input_writes_nothing(tmp_path, capsys):
    broken = build_archive(tmp_path / "broken.tgz", drop="de-en/IWSLT14.TED.tst2011.de-en.en.xml")
    assert main(["prepare", "iwslt14", str(broken), str(tmp_path / "out"), "--no-progress"]) == 2
    assert "IWSLT14.TED.tst2011.de-en.en.xml" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    (tmp_path / "junk.tgz").write_bytes(b"not an archive")
    assert main(["prepare", "iwslt14", str(tmp_path / "junk.tgz"), str(tmp_path / "out"), "--no-progress"]) == 2
    assert main(["prepare", "iwslt14", str(tmp_path / "absent.tgz"), str(tmp_path / "out"), "--no-progress"]) == 2
    assert main(["prepare", "iwslt14", str(broken), str(tmp_path / "new" / "out"), "--no-progress"]) == 2
    assert not (tmp_path / "new").exists()  # not even the parent directory
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep")
    assert main(["prepare", "iwslt14", str(tmp_path / "junk.tgz"), str(full), "--no-progress"]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert [p.name for p in full.iterdir()] == ["x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.tgz", "full", "junk.tgz"]
