"""``varattn serve``: its JSON API through Starlette's test client, on tiny trained runs.

Every endpoint answers with the library's numbers (``varattn align --json``, ``TrainedModel.score``,
``TrainedVQA.regions``); every bad request gets a 4xx JSON error, never a traceback. The module needs the
``serve`` extra (and the test client's httpx2) and skips without it; the VQA tests need the ``vqa`` extra too.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import threading

import pytest

import varattn
from varattn.cli import main
from varattn.serve.limits import BadRequest, Limits

from conftest import VQA_TINY, need

need("starlette", "serve")
need("uvicorn", "serve")
need("multipart", "serve")
need("httpx2", "test")

from starlette.testclient import TestClient  # noqa: E402

from varattn.serve import explore  # noqa: E402
from varattn.serve.app import Gate, create_app  # noqa: E402


@pytest.fixture(scope="module")
def nmt_runs(tiny_run):
    return {"var-enum": tiny_run("var-enum", 3), "soft": tiny_run("soft", 3)}


@pytest.fixture(scope="module")
def client(nmt_runs):
    runs = explore.load_runs([nmt_runs["var-enum"], nmt_runs["soft"]], device="cpu")
    with TestClient(create_app(runs, Limits(max_tokens=20, max_chars=200, max_upload_bytes=64 * 1024))) as c:
        yield c


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory):
    need("easy_vqa", "vqa")
    need("PIL", "vqa")
    import os

    from varattn.vqa.config import load_config
    from varattn.vqa.train import train

    base = tmp_path_factory.mktemp("serve-vqa")
    old = os.environ.get("VARATTN_CACHE")
    os.environ["VARATTN_CACHE"] = str(tmp_path_factory.getbasetemp() / "easy-vqa-cache")
    cfg = load_config("easy", {"mode": "var-enum", "max_steps": 2, "batch_size": 16, "threads": 1, "device": "cpu",
                               "valid_batch_size": 16}, VQA_TINY)
    train(cfg, base / "vqa-run", progress=False, tensorboard=False)
    yield base / "vqa-run"
    if old is None:
        os.environ.pop("VARATTN_CACHE", None)
    else:
        os.environ["VARATTN_CACHE"] = old


@pytest.fixture(scope="module")
def vqa_client(vqa_run, nmt_runs):
    runs = explore.load_runs([vqa_run, nmt_runs["var-enum"]], device="cpu")
    with TestClient(create_app(runs, Limits(max_upload_bytes=64 * 1024, max_image_pixels=512 * 512))) as c:
        yield c


def pair(client, run="var-enum"):
    examples = client.get(f"/api/examples?run={run}").json()["examples"]
    return examples[0]["src"], examples[0]["tgt"]


# -- the endpoints ------------------------------------------------------------------------------------------
def test_runs_lists_each_run_with_its_methods(client):
    data = client.get("/api/runs").json()
    runs = {r["name"]: r for r in data["runs"]}
    assert len(runs) == 2
    by_mode = {r["mode"]: r for r in data["runs"]}
    assert by_mode["var-enum"]["methods"] == ["prior", "posterior", "exact"]
    assert by_mode["soft"]["methods"] == ["prior", "exact"]
    assert all(r["task"] == "nmt" for r in data["runs"])
    assert data["limits"]["max_tokens"] == 20


def _name(client, mode):
    return next(r["name"] for r in client.get("/api/runs").json()["runs"] if r["mode"] == mode)


def test_translate_gives_the_search_and_the_alignments_of_its_output(client, nmt_runs, tmp_path, capsys):
    run = _name(client, "var-enum")
    src, _ = pair(client, run)
    r = client.post("/api/translate", json={"run": run, "src": src, "eos_norm": 3.0, "beam": 2, "alternatives": 2})
    assert r.status_code == 200, r.text
    data = r.json()
    trained = varattn.load(nmt_runs["var-enum"], device="cpu")
    expected = trained.translate([src], beam=2, eos_norm=3.0)[0]
    assert data["translation"]["tokens"] == expected.tokens and expected.tokens
    assert data["translation"]["log_prob"] == pytest.approx(expected.log_prob, abs=1e-5)
    a = data["alignment"]
    assert a["src_pieces"] == src.split() and a["tgt_pieces"] == expected.tokens
    # the exact log-likelihood of the output: the library's score of the same pair
    assert a["log_prob"] == pytest.approx(trained.score([src], [expected.text])[0]["log_prob"], abs=1e-4)
    # every matrix is what `varattn align --json` writes for (source, output)
    (tmp_path / "s").write_text(src + "\n")
    (tmp_path / "t").write_text(expected.text + "\n")
    for method in ("prior", "posterior", "exact"):
        capsys.readouterr()
        assert main(["align", str(nmt_runs["var-enum"]), "--src", str(tmp_path / "s"), "--tgt", str(tmp_path / "t"),
                     "--method", method, "--json", "--device", "cpu"]) == 0
        line = json.loads(capsys.readouterr().out)
        m = a["methods"][method]
        assert m["matrix"] == line["matrix"], method
        assert m["links"] == line["links"], method
        for row, h, alternatives in zip(m["matrix"], m["entropy"], m["alternatives"]):
            assert sum(row) == pytest.approx(1.0, abs=1e-4)
            assert h == pytest.approx(-sum(p * math.log(p) for p in row if p > 0), abs=1e-3)
            assert len(alternatives) == 2 and alternatives[0][1] == max(row) >= alternatives[1][1]


def test_align_links_at_a_threshold_and_from_given_pieces(client):
    run = _name(client, "var-enum")
    src, tgt = pair(client, run)
    argmax = client.post("/api/align", json={"run": run, "src": src, "tgt": tgt}).json()
    for m in argmax["methods"].values():
        assert len(m["piece_links"]) == len(tgt.split())  # one link per target piece
    data = client.post("/api/align", json={"run": run, "src": src, "tgt": tgt, "threshold": 0.2}).json()
    assert data["threshold"] == 0.2
    for m in data["methods"].values():
        above = sorted([s, t] for t, row in enumerate(m["matrix"]) for s, p in enumerate(row) if p > 0.2)
        assert m["piece_links"] == above
    pieces = client.post("/api/align", json={"run": run, "src": src, "tgt_tokens": tgt.split(), "threshold": 0.2})
    assert pieces.json()["methods"] == data["methods"]
    soft = client.post("/api/align", json={"run": _name(client, "soft"), "src": src, "tgt": tgt}).json()
    assert set(soft["methods"]) == {"prior", "exact"} and soft["elbo"] is None


def test_score_is_the_librarys(client, nmt_runs):
    run = _name(client, "var-enum")
    src, tgt = pair(client, run)
    data = client.post("/api/score", json={"run": run, "src": src, "tgt": tgt}).json()
    expected = varattn.load(nmt_runs["var-enum"], device="cpu").score([src], [tgt])[0]
    assert data["log_prob"] == pytest.approx(expected["log_prob"]) and data["elbo"] == pytest.approx(expected["elbo"])
    assert data["tokens"] == len(tgt.split()) + 1
    assert data["perplexity"] == pytest.approx(math.exp(-expected["log_prob"] / data["tokens"]))


def test_the_page_and_its_files_are_served_and_nothing_else(client):
    page = client.get("/")
    assert page.status_code == 200 and "varattn explorer" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    for path in ("/static/../app.py", "/static/..%2f..%2fapp.py", "/static/%2e%2e/explore.py", "/run.json",
                 "/api/../run.json"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert "Traceback" not in r.text


# -- bad requests -------------------------------------------------------------------------------------------
BAD = [
    ("post", "/api/translate", {"content": b""}, 400, "no body"),
    ("post", "/api/translate", {"content": b"{not json"}, 400, "not valid JSON"),
    ("post", "/api/translate", {"json": ["a list"]}, 400, "JSON object"),
    ("post", "/api/translate", {"json": {"src": "kugi"}}, 400, "'run'"),
    ("post", "/api/translate", {"json": {"run": "nope", "src": "kugi"}}, 404, "unknown run"),
    ("post", "/api/translate", {"json": {"run": 3, "src": "kugi"}}, 400, "'run'"),
    ("post", "/api/translate", {"json": {"run": "RUN"}}, 400, "missing field 'src'"),
    ("post", "/api/translate", {"json": {"run": "RUN", "src": "   "}}, 400, "empty"),
    ("post", "/api/translate", {"json": {"run": "RUN", "src": 7}}, 400, "must be a string"),
    ("post", "/api/translate", {"json": {"run": "RUN", "src": "x" * 201}}, 413, "limit is 200"),
    ("post", "/api/translate", {"json": {"run": "RUN", "src": "kugi " * 21}}, 413, "21 tokens"),
    ("post", "/api/translate", {"json": {"run": "RUN", "src": "kugi", "beam": "5"}}, 400, "'beam' must be an integer"),
    ("post", "/api/translate", {"json": {"run": "RUN", "src": "kugi", "beam": True}}, 400, "'beam'"),
    ("post", "/api/translate", {"json": {"run": "RUN", "src": "kugi", "beam": 21}}, 400, "between 1 and 20"),
    ("post", "/api/translate", {"json": {"run": "RUN", "src": "kugi", "topk": -1}}, 400, "'topk'"),
    ("post", "/api/translate", {"json": {"run": "RUN", "src": "kugi", "threshold": 1.5}}, 400, "'threshold'"),
    ("post", "/api/translate", {"json": {"run": "RUN", "src": "kugi", "alternatives": 0}}, 400, "'alternatives'"),
    ("post", "/api/translate", {"content": b'{"run": "RUN", "src": "kugi", "alpha": NaN}'}, 400, "'alpha'"),
    ("post", "/api/translate", {"content": b"x" * (64 * 1024 + 1)}, 413, "larger than the limit"),
    ("post", "/api/align", {"json": {"run": "RUN", "src": "kugi"}}, 400, "missing field 'tgt'"),
    ("post", "/api/align", {"json": {"run": "RUN", "src": "kugi", "tgt": "x", "tgt_tokens": ["x"]}}, 400, "not both"),
    ("post", "/api/align", {"json": {"run": "RUN", "src": "kugi", "tgt_tokens": ["a b"]}}, 400, "without spaces"),
    ("post", "/api/align", {"json": {"run": "RUN", "src": "kugi", "tgt_tokens": []}}, 400, "empty"),
    ("post", "/api/align", {"json": {"run": "RUN", "src": "kugi", "tgt_tokens": "x"}}, 400, "must be a list"),
    ("post", "/api/score", {"json": {"run": "RUN", "src": "kugi", "tgt": None}}, 400, "'tgt'"),
    ("post", "/api/answer", {"json": {"run": "RUN", "question": "what?", "example": 0}}, 400, "needs a vqa run"),
    ("get", "/api/image?run=RUN&index=0", {}, 400, "needs a vqa run"),
    ("get", "/api/examples", {}, 400, "'run'"),
    ("get", "/api/translate", {}, 405, "method not allowed"),
    ("post", "/api/runs", {}, 405, "method not allowed"),
    ("get", "/api/nothing", {}, 404, "not found"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "fragment"), BAD,
                         ids=[f"{p}-{f}" for _, p, _, _, f in BAD])
def test_a_bad_request_is_a_json_error(client, method, path, kwargs, status, fragment):
    run = _name(client, "var-enum")
    if "json" in kwargs:
        body = kwargs["json"]
        if isinstance(body, dict) and body.get("run") == "RUN":
            kwargs = {"json": {**body, "run": run}}
    if "content" in kwargs:
        kwargs = {"content": kwargs["content"].replace(b"RUN", run.encode()),
                  "headers": {"content-type": "application/json"}}
    r = getattr(client, method)(path.replace("RUN", run), **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert fragment in r.json()["error"] and "Traceback" not in r.text


def test_a_fault_of_the_server_is_a_json_500_without_a_traceback(client, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(explore, "score", broken)
    r = client.post("/api/score", json={"run": _name(client, "var-enum"), "src": "kugi", "tgt": "xajyf"})
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (the server's log has the details)"}
    assert "secret detail" in caplog.text  # logged on the server's side only


def test_a_library_error_is_a_400(client):
    # K-max for a soft model is fine; an unknown word is read as <unk>: both answer
    r = client.post("/api/translate", json={"run": _name(client, "soft"), "src": "zzz qqq", "topk": 2})
    assert r.status_code == 200, r.text
    assert r.json()["alignment"] is None or r.json()["alignment"]["src_unknown"] == [0, 1]


def test_other_hosts_are_refused_when_bound_to_loopback(nmt_runs):
    runs = explore.load_runs([nmt_runs["soft"]], device="cpu")
    with TestClient(create_app(runs, allowed_hosts=["127.0.0.1", "localhost"]),
                    base_url="http://127.0.0.1") as c:
        assert c.get("/api/runs").status_code == 200
        refused = c.get("/api/runs", headers={"host": "evil.example:8000"})
        assert refused.status_code == 400 and "127.0.0.1" in refused.json()["error"]
        assert c.get("/api/runs", headers={"host": "localhost:8000"}).status_code == 200


def test_the_gate_queues_then_refuses():
    gate = Gate(concurrency=1, max_queue=1)
    release = threading.Event()
    order = []

    def slow(tag):
        release.wait(5)
        order.append(tag)
        return tag

    async def scenario():
        first = asyncio.create_task(gate.run(slow, "first"))
        second = asyncio.create_task(gate.run(slow, "second"))
        await asyncio.sleep(0.2)
        assert gate.inside == 2
        with pytest.raises(BadRequest) as refused:
            await gate.run(slow, "third")
        assert refused.value.status == 503
        release.set()
        return await asyncio.gather(first, second)

    assert asyncio.run(scenario()) == ["first", "second"]
    assert gate.inside == 0


# -- VQA ----------------------------------------------------------------------------------------------------
def _png(pixels) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_answer_about_an_example_and_an_upload(vqa_client, vqa_run):
    run = next(r for r in vqa_client.get("/api/runs").json()["runs"] if r["task"] == "vqa")
    assert run["methods"] == ["prior", "posterior", "exact"] and run["images"]
    examples = vqa_client.get(f"/api/examples?run={run['name']}").json()["examples"]
    assert examples and {"question", "answer", "image"} <= set(examples[0])
    image = vqa_client.get(f"/api/image?run={run['name']}&index={examples[0]['image']}")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    question = examples[0]["question"]
    by_example = vqa_client.post("/api/answer", json={"run": run["name"], "question": question,
                                                      "example": examples[0]["image"]})
    assert by_example.status_code == 200, by_example.text
    data = by_example.json()
    assert sum(a["probability"] for a in data["answers"]) == pytest.approx(1.0, abs=1e-3)
    regions = data["regions"]
    rows, cols = regions["grid"]
    for m in ("prior", "posterior", "exact"):
        assert len(regions[m]["probs"]) == rows * cols
        assert sum(regions[m]["probs"]) == pytest.approx(1.0, abs=1e-3)
    from PIL import Image

    trained = varattn.load(vqa_run, device="cpu")
    expected = trained.regions(question, image=Image.open(io.BytesIO(image.content)))
    assert regions["answer"] == expected.answer
    assert regions["exact"]["probs"] == pytest.approx(expected.exact.tolist(), abs=1e-5)
    upload = vqa_client.post("/api/answer", data={"run": run["name"], "question": question},
                             files={"image": ("picture.png", image.content, "image/png")})
    assert upload.status_code == 200, upload.text
    assert upload.json()["regions"] == regions  # the same pixels, the same numbers
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(image.content)).convert("RGB").save(jpeg, format="JPEG")
    conditioned = vqa_client.post("/api/answer", data={"run": run["name"], "question": question, "answer": "red"},
                                  files={"image": ("p.jpg", jpeg.getvalue(), "image/jpeg")})
    assert conditioned.status_code == 200 and conditioned.json()["regions"]["answer"] == "red"


def test_bad_uploads_and_questions_are_json_errors(vqa_client):
    import numpy as np
    from PIL import Image

    name = next(r["name"] for r in vqa_client.get("/api/runs").json()["runs"] if r["task"] == "vqa")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    big = io.BytesIO()
    Image.new("L", (1024, 1024)).save(big, format="PNG")  # small file, too many pixels
    png = _png(np.zeros((8, 8, 3), dtype=np.uint8))
    noisy = _png(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    cases = [
        ({"data": {"run": name, "question": "what?"}, "files": {"image": ("a.txt", b"hello", "image/png")}}, 415),
        ({"data": {"run": name, "question": "what?"}, "files": {"image": ("a.gif", gif.getvalue(), "image/gif")}}, 415),
        ({"data": {"run": name, "question": "what?"}, "files": {"image": ("a.png", big.getvalue(), "image/png")}}, 413),
        ({"data": {"run": name, "question": "what?"}, "files": {"image": ("a.png", b"\x89PNG\r\n\x1a\n" + b"0" * 70000,
                                                                            "image/png")}}, 413),
        ({"data": {"run": name, "question": "what?"},
          "files": {"image": ("a.png", noisy[: len(noisy) // 2], "image/png")}}, 400),
        ({"data": {"run": name, "question": "what?"}, "files": {"picture": ("a.png", png, "image/png")}}, 400),
        ({"data": {"run": name, "question": ""}, "files": {"image": ("a.png", png, "image/png")}}, 400),
        ({"data": {"run": name, "question": "what?", "answer": "purple"},
          "files": {"image": ("a.png", png, "image/png")}}, 400),
        ({"json": {"run": name, "question": "what?"}}, 400),
        ({"json": {"run": name, "question": "what?", "example": 10_000}}, 404),
        ({"json": {"run": name, "question": "what?", "example": -1}}, 400),
        ({"json": {"run": name, "question": "what?", "example": 0, "image": "x"}}, 400),
    ]
    for kwargs, status in cases:
        r = vqa_client.post("/api/answer", **kwargs)
        assert r.status_code == status, (kwargs.get("data") or kwargs.get("json"), r.text)
        assert r.json()["error"] and "Traceback" not in r.text


# -- the command --------------------------------------------------------------------------------------------
def test_serve_command_binds_loopback_and_warns_for_other_hosts(nmt_runs, monkeypatch, capsys, caplog):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    assert main(["serve", str(nmt_runs["soft"]), "--device", "cpu", "--port", "8123"]) == 0
    assert calls[-1][1]["host"] == "127.0.0.1" and calls[-1][1]["port"] == 8123
    assert "exposes" not in caplog.text
    assert main(["serve", str(nmt_runs["soft"]), "--device", "cpu", "--host", "0.0.0.0"]) == 0
    assert "exposes these models" in caplog.text
    capsys.readouterr()
    assert main(["serve", str(nmt_runs["soft"]) + "-missing", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert main(["serve", str(nmt_runs["soft"]), "--max-tokens", "0"]) == 2
    assert "--max-tokens" in capsys.readouterr().err


def test_the_load_test_runs_end_to_end(nmt_runs):
    """``benchmarks/serve_load.py`` starts a real server, sends its requests and reports (a few requests here)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "serve_load.py"
    src = str(Path(varattn.__file__).resolve().parents[1])  # the server runs the varattn these tests import
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, str(script), str(nmt_runs["soft"]), "--requests", "6", "--clients", "3",
                           "--beam", "2", "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] == 6 and report["failed"] == {}
    assert set(report["latency_ms"]) == {"translate", "align"}
    assert report["latency_ms"]["align"]["p50"] > 0
