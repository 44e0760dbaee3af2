"""Tests for decoding: varattn.nmt.search, TrainedModel.translate, ``varattn translate`` and ``varattn bleu``."""

from __future__ import annotations

import io
import json
import logging
import math

import pytest
import torch

from varattn.cli import main
from varattn.errors import VarattnError
from varattn.latent import ContextPredictor, make_objective, mode_names
from varattn.nmt.align import parse_pharaoh
from varattn.nmt.model import LatentAlignmentNMT, ModelConfig
from varattn.nmt.search import (
    BOS_ID,
    EOS_ID,
    MIXTURE_TOPK,
    PAD_ID,
    DecodingOptions,
    beam_search,
    greedy_search,
    length_penalty,
    next_log_probs,
    pad_batch,
    topk_for,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, tgt_vocab: int = 6, src_vocab: int = 7, init_range: float = 1.0) -> LatentAlignmentNMT:
    """A random model with peaky distributions (large init) and no dropout."""
    torch.manual_seed(seed)
    cfg = ModelConfig(src_vocab_size=src_vocab, tgt_vocab_size=tgt_vocab, embed_dim=6, encoder_hidden=5,
                      encoder_layers=1, decoder_hidden=7, decoder_layers=2, attention_dim=6, output_hidden=9,
                      dropout=0.0, init_range=init_range)
    return LatentAlignmentNMT(cfg, with_inference=False).eval()


SOURCES = [[4, 5, 6, 1], [6, 4], [5, 5, 4], [1]]
#: an objective of each predictive rule (the search asks the objective how to predict)
RULES = {"marginal": make_objective("marginal"), "soft": make_objective("soft"),
         "prior-mean": make_objective("var-relaxed")}
MARGINAL = RULES["marginal"]


def beam(model, src, lengths, objective=MARGINAL, n_best=1, **options):
    return beam_search(model, src, lengths, objective, DecodingOptions(**options), n_best=n_best)


def greedy(model, src, lengths, objective=MARGINAL, **options):
    return greedy_search(model, src, lengths, objective, DecodingOptions(beam=1, **options))


def exact_rule(model, query, scores, enc, predictive="marginal"):
    """``(N, V)`` the predictive rule on the plain output layer (``ContextPredictor``: the mixture in log space)."""
    return RULES[predictive].predict_log_probs(ContextPredictor(model.head, query, enc.memory), scores)


def teacher_forced(model, src_ids, seq, predictive="marginal", topk=None):
    """Per-token log-probabilities of ``seq + </s>`` and the prior at each step, one sentence."""
    src, lengths = pad_batch([src_ids])
    with torch.no_grad():
        enc = model.encode(src, lengths)
        state = model.initial_state(1, src.device)
        prev, logps, priors = BOS_ID, [], []
        for tok in [*seq, EOS_ID]:
            query, scores, state = model.step(model.tgt_embed(torch.tensor([prev])), state, enc, topk)
            logps.append(float(exact_rule(model, query, scores, enc, predictive)[0, tok]))
            priors.append(torch.softmax(scores, -1)[0])
            prev = tok
    return logps, torch.stack(priors)


def brute_force(model, src_ids, max_len, alpha=0.0, eos_norm=0.0, predictive="marginal", topk=None):
    """Every output of at most ``max_len`` tokens, scored like the search, best first.

    A depth-first walk over all prefixes: one decoder step per prefix, teacher-forced.
    """
    words = [t for t in range(model.cfg.tgt_vocab_size) if t not in (PAD_ID, BOS_ID, EOS_ID)]
    src, lengths = pad_batch([src_ids])
    scored = []
    with torch.no_grad():
        enc = model.encode(src, lengths)

        def walk(prefix, state, prev, total):
            query, scores, state = model.step(model.tgt_embed(torch.tensor([prev])), state, enc, topk)
            logp = exact_rule(model, query, scores, enc, predictive)[0].tolist()
            n = len(prefix)
            raw = total + logp[EOS_ID] - eos_norm * len(src_ids) / (n + 2)
            scored.append((raw / length_penalty(n + 1, alpha), prefix, total + logp[EOS_ID]))
            if n < max_len:
                for w in words:
                    walk([*prefix, w], state, w, total + logp[w])

        walk([], model.initial_state(1, src.device), BOS_ID, 0.0)
    scored.sort(key=lambda x: -x[0])
    return scored


@pytest.mark.parametrize(
    ("seed", "alpha", "eos_norm"), [(1, 0.0, 0.0), (1, 1.0, 0.0), (3, 0.6, 3.0), (2, 0.0, 3.0), (3, 2.0, 0.0)],
)
def test_large_beam_finds_brute_force_best(seed, alpha, eos_norm):
    model = tiny_model(seed=seed)
    for src_ids in SOURCES[:3]:
        exact = brute_force(model, src_ids, 3, alpha, eos_norm)
        src, lengths = pad_batch([src_ids])
        nbest = beam(model, src, lengths, beam=64, alpha=alpha, eos_norm=eos_norm, max_len_a=0.0, max_len_b=3,
                     n_best=5)[0]
        assert nbest[0].tokens == exact[0][1]
        by_seq = {tuple(seq): (score, log_prob) for score, seq, log_prob in exact}
        for hyp in nbest:  # the search may stop before it has 5 (the best is then certain)
            assert hyp.score == pytest.approx(by_seq[tuple(hyp.tokens)][0], abs=1e-4)
            assert hyp.log_prob == pytest.approx(by_seq[tuple(hyp.tokens)][1], abs=1e-4)


def test_brute_force_cases_are_not_trivial():
    """Greedy misses the best output and the best is sometimes long: a wrong search can fail the test above."""
    model = tiny_model(seed=1)
    exact = brute_force(model, SOURCES[0], 3)
    src, lengths = pad_batch([SOURCES[0]])
    best = greedy(model, src, lengths, alpha=0.0, max_len_a=0.0, max_len_b=3)[0]
    assert best.tokens != exact[0][1] and best.score < exact[0][0] - 1e-3
    assert len(brute_force(tiny_model(seed=3), SOURCES[0], 3, 0.6, 3.0)[0][1]) == 3


def test_beam_hypotheses_rescore_and_align_consistently():
    model = tiny_model(seed=2, tgt_vocab=9)
    src, lengths = pad_batch(SOURCES)
    for topk in (None, 2):
        nbest = beam(model, src, lengths, beam=3, topk=topk, alpha=0.0, eos_norm=2.0, n_best=3)
        assert max(len(h.tokens) for hyps in nbest for h in hyps) >= 3
        for src_ids, hyps in zip(SOURCES, nbest):
            assert 1 <= len(hyps) <= 3
            assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
            for hyp in hyps:
                logps, priors = teacher_forced(model, src_ids, hyp.tokens, topk=topk)
                assert hyp.log_prob == pytest.approx(sum(logps), abs=1e-4)
                eos_adjustment = 2.0 * len(src_ids) / (len(hyp.tokens) + 2)
                assert hyp.score == pytest.approx(sum(logps) - eos_adjustment, abs=1e-4)
                assert hyp.alignment.shape == (len(hyp.tokens), len(src_ids))
                torch.testing.assert_close(hyp.alignment, priors[: len(hyp.tokens), : len(src_ids)])
                assert not set(hyp.tokens) & {PAD_ID, BOS_ID, EOS_ID}
                assert len(hyp.tokens) <= 2 * len(src_ids) + 10


def test_batched_search_equals_one_sentence_at_a_time():
    model = tiny_model(seed=3, tgt_vocab=9)
    src, lengths = pad_batch(SOURCES)
    together = beam(model, src, lengths, beam=4, eos_norm=1.0)
    greedy_together = greedy(model, src, lengths)
    for b, src_ids in enumerate(SOURCES):
        one_src, one_len = pad_batch([src_ids])
        alone = beam(model, one_src, one_len, beam=4, eos_norm=1.0)[0][0]
        assert together[b][0].tokens == alone.tokens
        assert together[b][0].score == pytest.approx(alone.score, abs=1e-4)
        assert greedy_together[b].tokens == greedy(model, one_src, one_len)[0].tokens


@pytest.mark.parametrize("predictive", ["marginal", "soft", "prior-mean"])
@pytest.mark.parametrize("seed", [0, 4])
def test_beam_one_equals_greedy(predictive, seed):
    model = tiny_model(seed=seed, tgt_vocab=12)
    src, lengths = pad_batch(SOURCES)
    for eos_norm in (0.0, 2.0):
        by_greedy = greedy(model, src, lengths, RULES[predictive], eos_norm=eos_norm)
        by_beam = beam(model, src, lengths, RULES[predictive], beam=1, eos_norm=eos_norm)
        assert [h.tokens for h in by_greedy] == [b[0].tokens for b in by_beam]
        for g, b in zip(by_greedy, by_beam):
            assert g.score == pytest.approx(b[0].score, abs=1e-4)
            torch.testing.assert_close(g.alignment, b[0].alignment)


def test_kmax_with_k_equal_source_length_is_the_full_marginal():
    model = tiny_model(seed=5, tgt_vocab=10)
    src, lengths = pad_batch(SOURCES)
    full = beam(model, src, lengths, beam=3, topk=0)
    kmax = beam(model, src, lengths, beam=3, topk=src.shape[1])
    one = beam(model, src, lengths, beam=3, topk=1)
    for f, k in zip(full, kmax):
        assert f[0].tokens == k[0].tokens
        assert f[0].score == pytest.approx(k[0].score, abs=1e-5)
    assert any(abs(f[0].log_prob - o[0].log_prob) > 1e-4 for f, o in zip(full, one))


@pytest.mark.parametrize(("chunk", "tiny", "scale"), [(1 << 20, 1e-30, 1.0), (1, 1e-30, 1.0), (25, 1.0, 1.0),
                                                      (1 << 20, 0.0, 1.0), (25, 1e-30, 300.0)])
def test_fast_marginal_equals_the_models_rule(chunk, tiny, scale, monkeypatch):
    """Only real positions, chunks of (row, position) pairs (1: one at a time), the probability-space sum and its
    log-space fallback (tiny=1: every row; scale: logits so extreme that probabilities underflow)."""
    monkeypatch.setattr("varattn.nmt.search.MIX_CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr("varattn.nmt.search.MIX_TINY", tiny)
    model = tiny_model(seed=6, tgt_vocab=10)
    with torch.no_grad():
        model.head.generator.weight.mul_(scale)
    src, lengths = pad_batch(SOURCES)
    enc = model.encode(src, lengths)
    state = model.initial_state(len(SOURCES), src.device)
    emb = model.tgt_embed(torch.full((len(SOURCES),), BOS_ID))
    with torch.no_grad():
        for k in (1, 2, 3, None):
            query, scores, _ = model.step(emb, state, enc, k)
            expected = exact_rule(model, query, scores, enc)
            assert torch.isfinite(expected).all() and (expected.min() < -200) == (scale > 1)
            torch.testing.assert_close(next_log_probs(model, query, scores, enc, MARGINAL), expected)
            context_pre = model.head.context_part(enc.memory)
            torch.testing.assert_close(next_log_probs(model, query, scores, enc, MARGINAL, context_pre), expected)


def test_pad_and_bos_are_never_emitted():
    model = tiny_model(seed=7)
    with torch.no_grad():
        model.head.generator.bias[PAD_ID] += 50.0
        model.head.generator.bias[BOS_ID] += 50.0
    src, lengths = pad_batch(SOURCES)
    for hyps in [greedy(model, src, lengths), [b[0] for b in beam(model, src, lengths, beam=3)]]:
        for h, s in zip(hyps, SOURCES):
            assert not set(h.tokens) & {PAD_ID, BOS_ID}
            assert len(h.tokens) <= 2 * len(s) + 10


@pytest.mark.parametrize(("options", "flag"), [
    ({"beam": 0}, "--beam"), ({"beam": 2.5}, "--beam"), ({"beam": True}, "--beam"), ({"beam": "5"}, "--beam"),
    ({"topk": 2.5}, "--topk"), ({"topk": -3}, "--topk"), ({"alpha": -0.1}, "--alpha"),
    ({"alpha": math.inf}, "--alpha"), ({"eos_norm": -1.0}, "--eos-norm"), ({"eos_norm": math.nan}, "--eos-norm"),
    ({"max_len_a": -1.0}, "--max-len-a"), ({"max_len_b": math.inf}, "--max-len-b"),
])
def test_bad_decoding_options_are_one_line_errors(options, flag):
    with pytest.raises(VarattnError) as info:
        DecodingOptions(**options)
    message = str(info.value)
    assert message.startswith(flag + " ") and "\n" not in message and repr(next(iter(options.values()))) in message


def test_decoding_options_keep_good_values():
    options = DecodingOptions(beam=3.0, topk=2, alpha=0.0, eos_norm=3, max_len_a=0.0, max_len_b=-2)
    assert options.beam == 3 and isinstance(options.beam, int) and options.topk == 2
    assert options.max_output_length(4) == 0 and DecodingOptions(max_len_a=1.5, max_len_b=1).max_output_length(3) == 5
    with pytest.raises(AttributeError):
        options.beam = 4  # frozen: one object travels through search, run and the command


def test_default_topk_is_kmax_for_the_marginal_rule_and_nothing_for_soft():
    assert topk_for(MARGINAL) == MIXTURE_TOPK and topk_for(MARGINAL, 0) is None and topk_for(MARGINAL, 3) == 3
    assert topk_for(RULES["soft"]) is None and topk_for(RULES["prior-mean"]) is None
    model = tiny_model(seed=7, tgt_vocab=10, src_vocab=12)
    src, lengths = pad_batch([[4, 5, 6, 1, 7, 8, 9, 10, 11], [6, 4]])  # 9 positions: more than MIXTURE_TOPK
    as_long = {"eos_norm": 1e6, "max_len_a": 1.0, "max_len_b": 0}  # every output as long as its source
    default = beam(model, src, lengths, beam=3, **as_long)
    kmax = beam(model, src, lengths, beam=3, topk=MIXTURE_TOPK, **as_long)
    full = beam(model, src, lengths, beam=3, topk=0, **as_long)
    for d, k in zip(default, kmax):
        assert d[0].tokens == k[0].tokens and d[0].score == pytest.approx(k[0].score, abs=1e-6)
    # the long sentence's prior keeps at most K positions by default, all nine with topk=0
    assert int((default[0][0].alignment > 0).sum(-1).max()) <= MIXTURE_TOPK
    assert int((full[0][0].alignment > 0).sum(-1).min()) == 9
    for rule in ("soft", "prior-mean"):  # one output layer per token: the default keeps every position
        by_default = beam(model, src, lengths, RULES[rule], beam=3, **as_long)
        by_zero = beam(model, src, lengths, RULES[rule], beam=3, topk=0, **as_long)
        assert [h[0].tokens for h in by_default] == [h[0].tokens for h in by_zero]
        torch.testing.assert_close(by_default[0][0].alignment, by_zero[0][0].alignment)


def test_kmax_is_refused_for_a_dirichlet_alignment():
    model = tiny_model()
    src, lengths = pad_batch(SOURCES)
    with pytest.raises(VarattnError, match="--topk"):
        greedy(model, src, lengths, RULES["prior-mean"], topk=2)
    with pytest.raises(VarattnError, match="--topk"):
        beam(model, src, lengths, RULES["prior-mean"], beam=2, topk=2)
    assert len(greedy(model, src, lengths, RULES["soft"], topk=2)) == len(SOURCES)


# -- trained run directories ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run("marginal", steps=5)


@pytest.fixture(scope="module")
def trained(run_dir):
    import varattn

    return varattn.load(run_dir)


@pytest.fixture(scope="module")
def source_lines(trained):
    from varattn.nmt.data import synthetic_pairs

    return [" ".join(s) for s in synthetic_pairs(trained.config)["valid"].src[:5]]


def test_translate_api(trained, source_lines):
    lines = [source_lines[0], "", "qqq www", source_lines[1]]
    out = trained.translate(lines, beam=3, batch_size=2)
    assert len(out) == 4
    assert out[1].text == "" and out[1].tokens == []
    assert out[2].src_tokens == ["qqq", "www"]  # all unknown: still translated
    for res, line in zip(out, lines):
        assert res["text"] == res.text
        assert res.alignment.shape == (len(res.tokens), len(line.split()))
        assert res.text == trained.tgt_seg.detokenize(res.tokens)
    one = trained.translate([source_lines[0]], beam=3)[0]
    assert one.tokens == out[0].tokens  # batching and sorting do not change results
    assert trained.translate([], beam=3) == []
    same = trained.translate(lines, DecodingOptions(beam=3), batch_size=2)
    assert [t.tokens for t in same] == [t.tokens for t in out]
    with pytest.raises(VarattnError, match="DecodingOptions"):
        trained.translate(lines, 3)  # the search settings are one object, or named
    with pytest.raises(VarattnError, match="not both"):
        trained.translate(lines, DecodingOptions(beam=3), beam=2)
    with pytest.raises(VarattnError, match="--beam"):
        trained.translate(lines, beam=0)


def test_long_line_is_truncated_with_a_warning(trained, source_lines, caplog):
    long_line = " ".join([source_lines[0]] * 100)
    with caplog.at_level(logging.WARNING, logger="varattn"):
        out = trained.translate(["", long_line], beam=2, max_src_len=30, max_len_b=5, line_offset=10)
    assert len(out) == 2 and out[0].text == ""
    assert out[1].truncated and len(out[1].src_tokens) == 30
    assert "input line 12" in caplog.text


def test_cli_one_output_line_per_input_line(run_dir, source_lines, tmp_path, capsys, caplog):
    inp = tmp_path / "in.txt"
    lines = [source_lines[0], "", " ".join([source_lines[1]] * 60), "zzz", source_lines[2]]
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    ref = tmp_path / "ref.txt"
    ref.write_text("\n".join(["a b c"] * len(lines)) + "\n", encoding="utf-8")
    rc = main(["translate", str(run_dir), "--input", str(inp), "--output", str(out), "--beam", "2",
               "--batch-size", "2", "--align", "--ref", str(ref), "--max-src-len", "40"])
    assert rc == 0
    written = out.read_text(encoding="utf-8").split("\n")
    assert written[-1] == "" and len(written) - 1 == len(lines)
    for line, src in zip(written, lines):
        text, links = line.split(" ||| ")
        for i, j in parse_pharaoh(links):
            assert i < min(len(src.split()), 40) and j < len(text.split())
    assert written[1] == " ||| "
    assert "BLEU (tokenized, lowercased)" in capsys.readouterr().err
    assert "input line 3 has 240 source tokens" in caplog.text


class _WatchedInput:
    """A binary stdin that checks, before handing out line ``k * size + 1``, that ``k * size`` are written."""

    def __init__(self, lines, size, output):
        self.lines = [line.encode() + b"\n" for line in lines]
        self.size, self.output, self.served = size, output, 0

    def readline(self):
        if self.served < len(self.lines) and self.served % self.size == 0:
            assert self.output.getvalue().count("\n") == self.served, "output not flushed per chunk"
        line = self.lines[self.served] if self.served < len(self.lines) else b""
        self.served += 1
        return line


def test_cli_streams_stdin_chunk_by_chunk(run_dir, source_lines, monkeypatch):
    stdout = io.StringIO()
    lines = source_lines + ["", source_lines[0]]
    monkeypatch.setattr("sys.stdin", _WatchedInput(lines, 3, stdout))
    monkeypatch.setattr("sys.stdout", stdout)
    assert main(["translate", str(run_dir), "--beam", "1", "--batch-size", "3", "--keep-bpe"]) == 0
    assert stdout.getvalue().count("\n") == len(lines)
    assert stdout.getvalue().split("\n")[5] == ""


def test_cli_translate_errors(run_dir, tmp_path, capsys):
    assert main(["translate", str(run_dir), "--input", str(tmp_path / "missing.txt")]) == 2
    assert main(["translate", str(tmp_path), "--input", str(tmp_path)]) == 2
    assert main(["translate", str(run_dir), "--topk", "-1", "--input", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3


def test_bleu_cli(tmp_path, capsys, monkeypatch):
    ref = tmp_path / "ref.txt"
    ref.write_text("the cat sat on the mat .\nit &apos;s a good day .\n", encoding="utf-8")
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("the cat sat on the mat .\nit &apos;s a good day .\n", encoding="utf-8")
    assert main(["bleu", "--ref", str(ref), "--hyp", str(hyp), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tok_bleu"] == pytest.approx(100.0) and result["n"] == 2
    monkeypatch.setattr("sys.stdin", io.BytesIO(b"the cat sat on a mat .\nit is a day .\n"))
    assert main(["bleu", "--ref", str(ref)]) == 0
    line = capsys.readouterr().out
    assert "sacreBLEU" in line and "100.00" not in line
    monkeypatch.setattr("sys.stdin", io.BytesIO(b"only one line\n"))
    assert main(["bleu", "--ref", str(ref)]) == 2


@pytest.mark.parametrize("mode", mode_names())
def test_every_mode_translates(mode, tiny_run, source_lines):
    import varattn

    trained = varattn.load(tiny_run(mode))
    assert trained.objective.predictive in ("marginal", "soft", "prior-mean")
    out = trained.translate(source_lines[:2] + [""], beam=2, max_len_b=4)
    assert len(out) == 3 and out[2].text == ""
    for res in out[:2]:
        assert math.isfinite(res.score) and res.alignment.shape[0] == len(res.tokens)
        rows = res.alignment.sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows))
    if trained.objective.supports_kmax:
        assert len(trained.translate(source_lines[:1], beam=2, topk=1, max_len_b=4)) == 1
