"""The paper's LSTM encoder-decoder with latent alignment (notes section B).

The recurrent pass is the same in every mode: the decoder is fed the *soft* prior context
``c_t = sum_i p(z_t = i) x_i`` (input feeding), so one pass yields the query ``h_t`` and the
prior scores for every target step. What differs by mode happens afterwards, in the latent
layer (``varattn.latent``): which alignment distribution is used and how the output
``f(x, z)`` is evaluated. Prediction too is the objective's (``Objective.predict_log_probs``, on the
output layer at a decoder step: ``varattn.nmt.search.StepPredictor``); K-max is ``varattn.latent.kmax``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from varattn import kernels
from varattn.latent import AlignmentProblem, LinearSoftmaxHead, kmax
from varattn.latent.emission import full_precision
from varattn.nmt.batching import Batch
from varattn.nmt.latent_output import LatentOutput

NEG_INF = float("-inf")


@dataclass
class ModelConfig:
    """Every size of the model. The defaults are the paper's IWSLT'14 sizes."""

    type: str = "lstm"
    src_vocab_size: int = 0
    tgt_vocab_size: int = 0
    embed_dim: int = 512
    encoder_hidden: int = 512  # per direction; memory vectors are 2x this
    encoder_layers: int = 2
    decoder_hidden: int = 768
    decoder_layers: int = 2
    attention_dim: int = 512
    output_hidden: int = 768
    inference_hidden: int = 512  # per direction
    inference_layers: int = 2
    dropout: float = 0.3
    init_range: float = 0.1
    enum_chunk_rows: int = 8192  # rows of (target token, source position) per output-layer chunk

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _lstm_pointwise(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``nn.LSTMCell``'s update from its summed gate pre-activations ``(B, 4H)`` (order i, f, g, o)."""
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class InferenceNetwork(nn.Module):
    """q(z | x, y): two BiLSTMs (source, full target) and bilinear scores (notes B).

    Position ``t`` of q aligns the word predicted at step ``t`` (``y_t``), and the target
    BiLSTM reads ``y_1 .. y_n </s>``, so q sees the current word and the whole target.
    """

    def __init__(self, cfg: ModelConfig, with_precision: bool = False):
        super().__init__()
        h = cfg.inference_hidden
        drop = cfg.dropout if cfg.inference_layers > 1 else 0.0
        self.src_rnn = nn.LSTM(cfg.embed_dim, h, cfg.inference_layers, batch_first=True,
                               bidirectional=True, dropout=drop)
        self.tgt_rnn = nn.LSTM(cfg.embed_dim, h, cfg.inference_layers, batch_first=True,
                               bidirectional=True, dropout=drop)
        self.bilinear = nn.Linear(2 * h, 2 * h, bias=False)
        #: the Dirichlet q's precision scores, one per target token (relaxed models only)
        self.precision = nn.Linear(2 * h, 1) if with_precision else None

    def forward(self, src_emb: Tensor, src_lengths: Tensor, tgt_emb: Tensor,
                tgt_lengths: Tensor) -> tuple[Tensor, Tensor | None]:
        """``src_emb (B, S, E)``, ``tgt_emb (B, T, E)`` -> scores ``(B, T, S)`` (unmasked) and precision
        scores ``(B, T)`` (None without a precision head)."""
        src_h = kernels.lstm_padded(self.src_rnn, src_emb, src_lengths)  # (B, S, 2h)
        tgt_h = kernels.lstm_padded(self.tgt_rnn, tgt_emb, tgt_lengths)  # (B, T, 2h)
        scores = torch.bmm(kernels.linear(tgt_h, self.bilinear.weight), src_h.transpose(1, 2))  # (B, T, S)
        precision = None if self.precision is None else self.precision(tgt_h).squeeze(-1)  # (B, T)
        return scores, precision


@dataclass
class DecoderState:
    """Recurrent state between decoder steps: per layer ``(h, c)`` ``(B, H)`` and the input feed ``(B, Dm)``."""

    hidden: list[tuple[Tensor, Tensor]]
    feed: Tensor

    def select(self, index: Tensor) -> DecoderState:
        """Reorder/duplicate rows (beam search)."""
        return DecoderState([(h[index], c[index]) for h, c in self.hidden], self.feed[index])


@dataclass
class Encoded:
    """The encoder's output for a batch.

    Attributes:
        memory: ``(B, S, Dm)`` source vectors.
        memory_proj: ``(B, S, A)`` the prior attention's projection of ``memory``.
        source_mask: ``(B, S)`` bool.
    """

    memory: Tensor
    memory_proj: Tensor
    source_mask: Tensor

    def select(self, index: Tensor) -> Encoded:
        return Encoded(self.memory[index], self.memory_proj[index], self.source_mask[index])


class LatentAlignmentNMT(LatentOutput, nn.Module):
    """Encoder, decoder with MLP prior attention, output head and (optional) inference network.

    ``with_precision`` (objectives whose ``needs_precision`` is set: the relaxed model) adds a
    precision head to the prior (on the decoder's query) and to the inference network.
    """

    def __init__(self, cfg: ModelConfig, with_inference: bool, with_precision: bool = False):
        super().__init__()
        self.cfg = cfg
        mem = 2 * cfg.encoder_hidden
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.embed_dim)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.LSTM(cfg.embed_dim, cfg.encoder_hidden, cfg.encoder_layers, batch_first=True,
                               bidirectional=True, dropout=cfg.dropout if cfg.encoder_layers > 1 else 0.0)
        self.cells = nn.ModuleList(
            nn.LSTMCell(cfg.embed_dim + mem if i == 0 else cfg.decoder_hidden, cfg.decoder_hidden)
            for i in range(cfg.decoder_layers)
        )
        self.attn_query = nn.Linear(cfg.decoder_hidden, cfg.attention_dim, bias=False)
        self.attn_memory = nn.Linear(mem, cfg.attention_dim, bias=False)
        self.attn_v = nn.Linear(cfg.attention_dim, 1, bias=False)
        self.head = LinearSoftmaxHead(cfg.decoder_hidden, mem, cfg.output_hidden, cfg.tgt_vocab_size, cfg.dropout)
        self.inference = InferenceNetwork(cfg, with_precision) if with_inference else None
        #: the prior Dirichlet's precision scores from the query (relaxed models only)
        self.precision = nn.Linear(cfg.decoder_hidden, 1) if with_precision else None
        for p in self.parameters():
            nn.init.uniform_(p, -cfg.init_range, cfg.init_range)

    # -- encoder -------------------------------------------------------------------------
    def encode(self, src: Tensor, src_lengths: Tensor, src_emb: Tensor | None = None) -> Encoded:
        """``src (B, S)`` -> ``Encoded`` (memory ``(B, S, Dm)``)."""
        if src_emb is None:
            src_emb = self.dropout(self.src_embed(src))
        memory = kernels.lstm_padded(self.encoder, src_emb, src_lengths)  # (B, S, Dm)
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < src_lengths[:, None].to(src.device)
        return Encoded(memory, kernels.linear(memory, self.attn_memory.weight), mask)

    # -- decoder -------------------------------------------------------------------------
    def initial_state(self, batch_size: int, device: torch.device) -> DecoderState:
        dtype = self.attn_memory.weight.dtype
        zeros = torch.zeros(batch_size, self.cfg.decoder_hidden, device=device, dtype=dtype)
        feed = torch.zeros(batch_size, 2 * self.cfg.encoder_hidden, device=device, dtype=dtype)
        return DecoderState([(zeros, zeros) for _ in self.cells], feed)

    def step(
        self, emb_t: Tensor, state: DecoderState, enc: Encoded, topk: int | None = None
    ) -> tuple[Tensor, Tensor, DecoderState]:
        """One decoder step.

        Args:
            emb_t: ``(B, E)`` embedding of the previous output.
            state: recurrent state and input feed.
            enc: the encoded source.
            topk: K-max truncation of the prior (changes the context fed forward too).

        Returns:
            query ``(B, Dd)``, prior scores ``(B, S)`` (``-inf`` at padding and outside the
            top-k), and the next state whose feed is the soft prior context.
        """
        x = torch.cat([emb_t, state.feed], dim=-1)
        hidden = []
        for i, cell in enumerate(self.cells):
            h, c = state.hidden[i]
            gates = (kernels.linear(x, cell.weight_ih, cell.bias_ih)
                     + kernels.linear(h, cell.weight_hh, cell.bias_hh))  # (B, 4H)
            h, c = _lstm_pointwise(gates, c)  # what cell(x, (h, c)) computes, with faster products
            hidden.append((h, c))
            x = self.dropout(h) if i + 1 < len(self.cells) else h
        query = x  # (B, Dd)
        energy = torch.tanh(kernels.linear(query, self.attn_query.weight).unsqueeze(1) + enc.memory_proj)  # (B, S, A)
        scores = full_precision(self.attn_v(energy).squeeze(-1)).masked_fill(~enc.source_mask, NEG_INF)  # (B, S)
        scores = kmax(scores, topk)
        context = torch.bmm(torch.softmax(scores, -1).unsqueeze(1), enc.memory).squeeze(1)  # (B, Dm)
        return query, scores, DecoderState(hidden, context)

    def decode_step(self, prev: Tensor, state: DecoderState, enc: Encoded,
                    topk: int | None = None) -> tuple[Tensor, Tensor, DecoderState]:
        """``step`` on the previous tokens ``prev (B,)``: the decoder protocol beam search uses (the
        Transformer's ``decode_step`` has the same signature)."""
        return self.step(self.tgt_embed(prev), state, enc, topk)

    def decode(self, tgt_emb: Tensor, enc: Encoded, topk: int | None = None) -> tuple[Tensor, Tensor]:
        """Teacher-forced pass: ``tgt_emb (B, T, E)`` -> queries ``(B, T, Dd)``, prior scores ``(B, T, S)``.

        The same computation as calling ``step`` for every position, arranged for speed:
        everything that does not depend on the previous step runs once for all steps (the
        embeddings' share of the first layer's gates), each cell's two products are one
        (``[x ; h] @ [W_ih ; W_hh]^T``), and the weight gradients of the per-step products are
        taken through ``kernels.step_linear`` (in one product over all steps on the fast path).
        """
        batch, steps, emb_dim = tgt_emb.shape
        if steps == 0:
            return (tgt_emb.new_zeros(batch, 0, self.cfg.decoder_hidden),
                    tgt_emb.new_zeros(batch, 0, enc.memory.shape[1]))
        cells = list(self.cells)
        first = cells[0]
        first_bias = first.bias_ih + first.bias_hh if first.bias else None
        emb_gates = kernels.linear(tgt_emb, first.weight_ih[:, :emb_dim], first_bias).unbind(1)
        recurrent = [kernels.step_linear(torch.cat([first.weight_ih[:, emb_dim:], first.weight_hh], 1))]
        biases: list[Tensor | None] = [None]
        for cell in cells[1:]:
            recurrent.append(kernels.step_linear(torch.cat([cell.weight_ih, cell.weight_hh], 1)))
            biases.append(cell.bias_ih + cell.bias_hh if cell.bias else None)
        attn_query = kernels.step_linear(self.attn_query.weight)
        state = self.initial_state(batch, tgt_emb.device)
        hidden = [h for h, _ in state.hidden]
        memory_cell = [c for _, c in state.hidden]
        feed = state.feed
        not_source = ~enc.source_mask
        queries, all_scores = [], []
        for t in range(steps):
            x = feed
            for i in range(len(cells)):
                gates = recurrent[i](torch.cat([x, hidden[i]], 1))
                if i == 0:
                    gates = gates + emb_gates[t]
                elif biases[i] is not None:
                    gates = gates + biases[i]
                hidden[i], memory_cell[i] = _lstm_pointwise(gates, memory_cell[i])
                x = self.dropout(hidden[i]) if i + 1 < len(cells) else hidden[i]
            energy = torch.tanh(attn_query(x).unsqueeze(1) + enc.memory_proj)  # (B, S, A)
            scores = full_precision(self.attn_v(energy).squeeze(-1)).masked_fill(not_source, NEG_INF)  # (B, S)
            scores = kmax(scores, topk)
            feed = torch.bmm(torch.softmax(scores, -1).unsqueeze(1), enc.memory).squeeze(1)  # (B, Dm)
            queries.append(x)
            all_scores.append(scores)
        return torch.stack(queries, 1), torch.stack(all_scores, 1)

    # -- the latent layer ----------------------------------------------------------------
    def problem(self, batch: Batch, with_posterior: bool, topk: int | None = None) -> AlignmentProblem:
        """Run the networks on ``batch`` (moved to the model's device) and wrap their outputs for an objective."""
        batch = batch.to(self.src_embed.weight.device)
        src_emb = self.dropout(self.src_embed(batch.src))  # (B, S, E)
        enc = self.encode(batch.src, batch.src_lengths, src_emb)
        tgt_emb = self.dropout(self.tgt_embed(batch.tgt))  # (B, T+1, E): <s> y_1 .. y_n </s>
        queries, prior_scores = self.decode(tgt_emb[:, :-1], enc, topk)
        posterior_scores = posterior_precision = None
        if with_posterior:
            if self.inference is None:
                raise ValueError("this model was built without an inference network")
            tgt_lengths = batch.tgt_mask.sum(1)
            posterior_scores, posterior_precision = self.inference(src_emb, batch.src_lengths, tgt_emb[:, 1:],
                                                                   tgt_lengths)
        return self.alignment_problem(batch, queries, prior_scores, enc.memory, enc.source_mask, posterior_scores,
                                      posterior_precision)
