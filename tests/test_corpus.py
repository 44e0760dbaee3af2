"""Reading parallel text: strict UTF-8, "\\n"-only line splitting, paired filtering, clear errors."""

from __future__ import annotations

import io
import os
import re
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varattn.errors import VarattnError
from varattn.nmt.corpora.corpus import (
    ParallelCorpus,
    iter_lines,
    read_lines,
    read_monolingual,
    read_parallel,
    resolve_pair,
)


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


# --------------------------------------------------------------------------------------------------
# resolve_pair


def test_resolve_pair_prefix_and_explicit(tmp_path):
    src = write(tmp_path / "train.de", "a\n")
    tgt = write(tmp_path / "train.en", "b\n")
    assert resolve_pair(prefix=tmp_path / "train", src_lang="de", tgt_lang="en") == (src, tgt)
    assert resolve_pair(src=str(src), tgt=str(tgt)) == (src, tgt)
    with pytest.raises(VarattnError, match=re.escape(f"file not found: {tmp_path / 'train.fr'}")):
        resolve_pair(prefix=tmp_path / "train", src_lang="fr", tgt_lang="en")
    with pytest.raises(VarattnError, match=re.escape(f"file not found: {tmp_path / 'nope'}")):
        resolve_pair(src=src, tgt=tmp_path / "nope")
    with pytest.raises(VarattnError, match="directory"):
        resolve_pair(src=tmp_path, tgt=tgt)
    with pytest.raises(VarattnError, match="prefix"):
        resolve_pair(prefix=tmp_path / "train", src_lang="de")
    with pytest.raises(VarattnError):
        resolve_pair()


# --------------------------------------------------------------------------------------------------
# read_lines


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", []),
        (b"\n", [""]),
        (b"a\nb\n", ["a", "b"]),
        (b"a\nb", ["a", "b"]),  # final line without newline
        (b"a\n\nb\n\n", ["a", "", "b", ""]),
        (b"a\r\nb\r\n", ["a", "b"]),  # CRLF
        (b"a\r\nb", ["a", "b"]),
        (b"a\rb\n", ["a\rb"]),  # a lone CR is not a line break
        (b"a\r\r\n", ["a\r"]),  # only one CR is part of the terminator
        ("x\x1cy\x85z\u2028w\u2029v\x0bu\x0c\n".encode(), ["x\x1cy\x85z\u2028w\u2029v\x0bu\x0c"]),
        ("\ufeffbom\nx\n".encode(), ["bom", "x"]),  # UTF-8 BOM removed
        ("\u00fc\u4e2d\U0001f600\n".encode(), ["\u00fc\u4e2d\U0001f600"]),
    ],
)
def test_read_lines(tmp_path, content, expected):
    path = write(tmp_path / "f.txt", content)
    assert read_lines(path) == expected
    assert read_monolingual(path) == expected


def test_read_lines_matches_wc_l(tmp_path):
    content = "one\x1c\n\u2028two\n\nthree\x85\n"
    path = write(tmp_path / "f.txt", content)
    assert len(read_lines(path)) == content.count("\n") == 4


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.de", b"ok\nfine \xc3\xa9\nbad \xff here\nmore\n")
    with pytest.raises(VarattnError) as info:
        read_lines(path)
    message = str(info.value)
    assert str(path) in message and "line 3" in message and "UTF-8" in message
    assert "\n" not in message


def test_missing_and_directory(tmp_path):
    with pytest.raises(VarattnError, match=re.escape(f"file not found: {tmp_path / 'x'}")):
        read_lines(tmp_path / "x")
    with pytest.raises(VarattnError, match="directory"):
        read_lines(tmp_path)


# --------------------------------------------------------------------------------------------------
# read_parallel


def test_unequal_line_counts_checked_before_anything(tmp_path):
    src = write(tmp_path / "a.src", "1\n2\n3\n")
    tgt = write(tmp_path / "a.tgt", "1\n2\n")
    calls = []

    def tokenize(line):
        calls.append(line)
        return line.split()

    with pytest.raises(VarattnError) as info:
        read_parallel(src, tgt, tokenize=tokenize)
    message = str(info.value)
    assert str(src) in message and str(tgt) in message
    assert "3 lines" in message and "2 lines" in message
    assert calls == []


def test_bad_utf8_in_target_reported_before_filtering(tmp_path):
    src = write(tmp_path / "a.src", "x\ny\n")
    tgt = write(tmp_path / "a.tgt", b"x\n\xe2\x82\n")
    with pytest.raises(VarattnError, match=re.escape(str(tgt)) + ": line 2"):
        read_parallel(src, tgt)


def test_empty_pairs_dropped_together_and_long_pairs_counted(tmp_path):
    src = write(tmp_path / "c.de", "a b\n\nc\nd d d d\ne\n  \t \nf\n")
    tgt = write(tmp_path / "c.en", "A B\nX\n\nD\nE E E E E\nY\nF\n")
    corpus = read_parallel(src, tgt, max_len=3)
    assert isinstance(corpus, ParallelCorpus)
    assert corpus.src == [["a", "b"], ["f"]]
    assert corpus.tgt == [["A", "B"], ["F"]]
    assert corpus.kept_line_numbers == [1, 7]
    assert (corpus.dropped_empty, corpus.dropped_long, corpus.total) == (3, 2, 7)
    assert len(corpus) == 2
    assert corpus.summary() == (f"read 7 pairs from {src} / {tgt}: kept 2, dropped 3 empty, 2 longer than 3 tokens")

    unlimited = read_parallel(src, tgt, max_len=None)
    assert unlimited.kept_line_numbers == [1, 4, 5, 7]
    assert unlimited.dropped_long == 0
    assert "no length limit" in unlimited.summary()

    # exactly max_len tokens is kept
    assert read_parallel(src, tgt, max_len=5).kept_line_numbers == [1, 4, 5, 7]
    assert read_parallel(src, tgt, max_len=4).kept_line_numbers == [1, 4, 7]


def test_crlf_parallel(tmp_path):
    src = write(tmp_path / "w.src", b"hello world\r\nbye\r\n")
    tgt = write(tmp_path / "w.tgt", b"hallo welt\nciao")
    corpus = read_parallel(src, tgt)
    assert corpus.src == [["hello", "world"], ["bye"]]
    assert corpus.tgt == [["hallo", "welt"], ["ciao"]]


def test_custom_tokenizer_and_bad_max_len(tmp_path):
    src = write(tmp_path / "s", "abc\n")
    tgt = write(tmp_path / "t", "de\n")
    assert read_parallel(src, tgt, tokenize=list).src == [["a", "b", "c"]]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(VarattnError, match="max_len"):
            read_parallel(src, tgt, max_len=bad)


# --------------------------------------------------------------------------------------------------
# iter_lines


def test_iter_lines_binary_text_and_wrapped():
    data = "a\r\n\u2028b\x1c\n\nlast".encode()
    expected = ["a", "\u2028b\x1c", "", "last"]
    assert list(iter_lines(io.BytesIO(data))) == expected
    assert list(iter_lines(io.TextIOWrapper(io.BytesIO(data), encoding="latin-1"))) == expected
    assert list(iter_lines(io.StringIO(data.decode()))) == expected
    assert list(iter_lines(io.BytesIO(b""))) == []
    assert list(iter_lines(io.BytesIO(b"x\n"))) == ["x"]


def test_iter_lines_invalid_input_reported_lazily():
    lines = iter_lines(io.BytesIO(b"good\nbad\xfe\n"), name="<stdin>")
    assert next(lines) == "good"
    with pytest.raises(VarattnError, match="<stdin>: line 2 is not valid UTF-8"):
        next(lines)
    # text that came through surrogateescape (e.g. stdin under a C locale) is refused too
    text = b"ok\n\xff\n".decode("utf-8", "surrogateescape")
    with pytest.raises(VarattnError, match="line 2"):
        list(iter_lines(io.StringIO(text)))


def test_iter_lines_streams_without_waiting_for_eof():
    read_fd, write_fd = os.pipe()
    with open(read_fd, "rb") as reader, open(write_fd, "wb", buffering=0) as writer:
        lines = iter_lines(reader)
        writer.write(b"first\n")
        got = []
        thread = threading.Thread(target=lambda: got.append(next(lines)))
        thread.start()
        thread.join(timeout=5)
        assert got == ["first"]  # yielded while the writer is still open
        writer.write(b"second")
        writer.close()
        assert list(lines) == ["second"]


# --------------------------------------------------------------------------------------------------
# property tests

_SPECIAL = [
    "",
    " ",
    "\t",
    "\r",
    "\x1c",
    "\x1d",
    "\x1e",
    "\x85",
    "\u2028",
    "\u2029",
    "\x0b",
    "\x0c",
    "\ufeff",
    "\u3000",
    "\x00",
    "a",
    "b c",
]
line_text = st.lists(
    st.one_of(st.sampled_from(_SPECIAL), st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=4)),
    max_size=5,
).map("".join)
line_lists = st.lists(line_text, max_size=8)


def file_bytes(lines: list[str], trailing_newline: bool) -> bytes:
    text = "".join(line + "\n" for line in lines) if trailing_newline else "\n".join(lines)
    return text.encode("utf-8")


def expected_lines(lines: list[str], trailing_newline: bool) -> list[str]:
    """What a reader must return, derived from how the file was built."""
    if not trailing_newline and lines and lines[-1] == "":
        lines = lines[:-1]  # "a\n" + "" is just "a\n"
    out = [line[:-1] if line.endswith("\r") else line for line in lines]
    if out and out[0].startswith("\ufeff"):
        out[0] = out[0][1:]
    return out


_FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(lines=line_lists, trailing=st.booleans())
def test_read_lines_property(lines, trailing):
    data = file_bytes(lines, trailing)
    expected = expected_lines(lines, trailing)
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / "f", data)
        assert read_lines(path) == expected
    assert list(iter_lines(io.BytesIO(data))) == expected
    if trailing:
        assert len(expected) == data.count(b"\n")  # same count as `wc -l`


@_FAST
@given(
    data=st.data(),
    n=st.integers(0, 8),
    unequal=st.booleans(),
    trailing=st.tuples(st.booleans(), st.booleans()),
    max_len=st.one_of(st.none(), st.integers(1, 4)),
)
def test_read_parallel_property(data, n, unequal, trailing, max_len):
    src_lines = data.draw(st.lists(line_text, min_size=n, max_size=n), label="src")
    m = data.draw(st.integers(0, 8), label="tgt size") if unequal else n
    tgt_lines = data.draw(st.lists(line_text, min_size=m, max_size=m), label="tgt")
    src_expected = expected_lines(src_lines, trailing[0])
    tgt_expected = expected_lines(tgt_lines, trailing[1])
    with tempfile.TemporaryDirectory() as tmp:
        src = write(Path(tmp) / "c.src", file_bytes(src_lines, trailing[0]))
        tgt = write(Path(tmp) / "c.tgt", file_bytes(tgt_lines, trailing[1]))
        if len(src_expected) != len(tgt_expected):
            with pytest.raises(VarattnError) as info:
                read_parallel(src, tgt, max_len=max_len)
            message = str(info.value)
            assert f"{len(src_expected)} lines" in message and f"{len(tgt_expected)} lines" in message
            assert str(src) in message and str(tgt) in message
            return
        corpus = read_parallel(src, tgt, max_len=max_len)

    kept, numbers, empty, long = [], [], 0, 0
    for number, (s, t) in enumerate(zip(src_expected, tgt_expected), start=1):
        s_tok, t_tok = s.split(), t.split()
        if not s_tok or not t_tok:
            empty += 1
        elif max_len is not None and max(len(s_tok), len(t_tok)) > max_len:
            long += 1
        else:
            kept.append((s_tok, t_tok))
            numbers.append(number)
    assert list(zip(corpus.src, corpus.tgt)) == kept
    assert corpus.kept_line_numbers == numbers
    assert (corpus.dropped_empty, corpus.dropped_long, corpus.total) == (empty, long, len(src_expected))
    assert len(corpus.src) + empty + long == corpus.total
    assert all(s and t for s, t in zip(corpus.src, corpus.tgt))


_INVALID = [b"\xff", b"\xfe", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe2\x82"]


@_FAST
@given(data=st.data(), lines=st.lists(line_text, min_size=1, max_size=8), bad=st.sampled_from(_INVALID))
def test_invalid_utf8_line_number_property(data, lines, bad):
    index = data.draw(st.integers(0, len(lines) - 1), label="bad line")
    line = lines[index]
    cut = data.draw(st.integers(0, len(line)), label="position")
    encoded = [x.encode("utf-8") for x in lines]
    encoded[index] = line[:cut].encode("utf-8") + bad + line[cut:].encode("utf-8")
    content = b"\n".join(encoded) + b"\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / "bad.txt", content)
        with pytest.raises(VarattnError) as info:
            read_lines(path)
    assert f"{path}: line {index + 1} " in str(info.value)
    with pytest.raises(VarattnError, match=f"<in>: line {index + 1} "):
        list(iter_lines(io.BytesIO(content), name="<in>"))
