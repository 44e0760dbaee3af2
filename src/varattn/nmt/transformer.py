"""A pre-LN Transformer encoder-decoder whose output goes through a latent alignment (issue 21).

Everything inside the encoder and the decoder is ordinary soft attention (self-attention, and
cross-attention in every decoder layer). The latent variable sits where the paper puts it, at the
output: for target step ``t`` the last decoder layer's state ``h_t`` is the query, the prior over
source positions is a single-head scaled dot product of ``h_t`` with the encoder outputs,

    p(z_t = i | x, y_<t) = softmax_i( (W_q h_t) . (W_k x_i) / sqrt(A) ),

and the output layer reads ``[h_t ; x_z]`` exactly as the LSTM model's does (``LinearSoftmaxHead``), so
every mode of ``varattn.latent`` applies unchanged. One latent variable per target token keeps exact
enumeration at ``S`` output evaluations per token; a latent alignment per head and per layer would
make the exact marginal a sum over ``S^(heads x layers)`` joint alignments.

The inference network ``q(z | x, y)`` is a small bidirectional Transformer encoder over the target
(it sees the whole output, including the word being aligned) and one over the source, scored
bilinearly, as the LSTM's BiLSTM inference network is.

Decoding is incremental: ``decode_step`` keeps every decoder layer's self-attention keys and values
(``TransformerState``) and the cross-attention keys and values of the source are computed once per
batch (``TransformerEncoded.cross``); the step's outputs equal the teacher-forced pass's (tested).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from varattn.errors import VarattnError
from varattn.latent import AlignmentProblem, LinearSoftmaxHead, kmax
from varattn.latent.emission import full_precision
from varattn.nmt.batching import Batch
from varattn.nmt.latent_output import LatentOutput

NEG_INF = float("-inf")


@dataclass
class TransformerConfig:
    """Every size of the Transformer. The defaults are the usual IWSLT'14 sizes (fairseq's
    ``transformer_iwslt_de_en``: 6 + 6 layers, 512 wide, 4 heads, 1024 feed-forward)."""

    type: str = "transformer"
    src_vocab_size: int = 0
    tgt_vocab_size: int = 0
    d_model: int = 512
    heads: int = 4
    ffn_dim: int = 1024
    encoder_layers: int = 6
    decoder_layers: int = 6
    #: size of the latent alignment's query and key projections
    attention_dim: int = 512
    output_hidden: int = 512
    #: layers of each of the inference network's two encoders (source, target)
    inference_layers: int = 1
    dropout: float = 0.3
    attention_dropout: float = 0.1
    #: the generator's weight is the target embedding (needs ``output_hidden == d_model``)
    tie_embeddings: bool = False
    #: decoder layers attend to the source softly (cross-attention); false: the source reaches the output
    #: only through the latent alignment, so that the output cannot predict without it (docs/transformer.md)
    cross_attention: bool = True
    #: what the output layer reads at the aligned position: ``encoder`` (the encoder's output x_i, as the paper's
    #: LSTM reads its BiLSTM state) or ``embedding`` (the source word's own embedding, which no other position
    #: can stand in for; the prior's keys stay the encoder's outputs)
    output_reads: str = "encoder"
    #: longest sequence the sinusoidal positions are defined for
    max_positions: int = 1024
    enum_chunk_rows: int = 8192  # rows of (target token, source position) per output-layer chunk

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def check(self) -> None:
        """Cross-key checks (the config loader calls this after the per-key ones)."""
        if self.output_reads not in ("encoder", "embedding"):
            raise VarattnError(f"model.output_reads must be encoder or embedding, got {self.output_reads!r}")
        if self.d_model % self.heads:
            raise VarattnError(f"model.d_model ({self.d_model}) must be a multiple of model.heads ({self.heads})")
        if self.tie_embeddings and self.output_hidden != self.d_model:
            raise VarattnError(f"model.tie_embeddings needs model.output_hidden ({self.output_hidden}) equal to "
                               f"model.d_model ({self.d_model})")


def sinusoids(length: int, dim: int, start: int = 0, device: torch.device | None = None) -> Tensor:
    """``(length, dim)`` sinusoidal position vectors of positions ``start .. start + length - 1``
    (Vaswani et al., 2017: sines in the first half, cosines in the second)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * (-math.log(10000.0) / max(half - 1, 1)))
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32)
    angles = pos[:, None] * freq[None, :]  # (length, half)
    out = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(out, (0, dim - 2 * half))  # an odd width gets a zero column


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (``F.scaled_dot_product_attention``) with separate query
    and key-value projections, so that keys and values can be computed once and cached."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, H, N, d/H)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (B, N, D)`` -> keys and values ``(B, H, N, D/H)`` each."""
        k, v = self.key_value(x).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        """``x (B, T, D)`` attends over ``keys``/``values`` ``(B, H, N, D/H)``; ``mask`` bool, broadcastable to
        ``(B, H, T, N)``, True where attention is allowed (None: everywhere). Returns ``(B, T, D)``."""
        q = self._split(self.query(x))  # (B, H, T, D/H)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        b, h, t, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, h * dh))  # (B, T, D)


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Pre-LN: ``x + SelfAttention(LN(x))``, then ``x + FFN(LN(x))``."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, attention_dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x (B, N, D)``, ``mask (B, 1, 1, N)`` bool (True at real keys) -> ``(B, N, D)``."""
        h = self.attn_norm(x)
        x = x + self.dropout(self.attn(h, *self.attn.keys_values(h), mask))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class Encoder(nn.Module):
    """A stack of pre-LN layers over embedded tokens with a final LayerNorm: ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, layers: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn_dim, dropout, attention_dropout)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``mask (B, N)`` bool, True at real tokens."""
        key_mask = mask[:, None, None, :]  # (B, 1, 1, N)
        for layer in self.layers:
            x = layer(x, key_mask)
        return self.norm(x)


class DecoderLayer(nn.Module):
    """Pre-LN: causal self-attention, soft cross-attention to the source, feed-forward."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, attention_dropout: float,
                 cross_attention: bool = True):
        super().__init__()
        self.self_norm = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads, attention_dropout)
        self.cross_norm = nn.LayerNorm(dim) if cross_attention else None
        self.cross_attn = MultiHeadAttention(dim, heads, attention_dropout) if cross_attention else None
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None, cross: tuple[Tensor, Tensor] | None,
                source_mask: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x (B, T, D)`` at positions after the ``past`` keys/values ``(B, H, P, D/H)`` (None: P = 0);
        ``cross`` the source's keys/values for this layer (None without cross-attention), ``source_mask (B, 1, 1, S)``.

        Returns the layer's output ``(B, T, D)`` and the self-attention keys/values of all ``P + T`` positions.
        """
        h = self.self_norm(x)
        keys, values = self.self_attn.keys_values(h)
        if past is not None:
            keys, values = torch.cat([past[0], keys], 2), torch.cat([past[1], values], 2)
        t, n = x.shape[1], keys.shape[2]
        # position p (of P + T) may see key j when j <= p; a single new step sees every key
        causal = None if t == 1 else torch.ones(t, n, dtype=torch.bool, device=x.device).tril(n - t)
        x = x + self.dropout(self.self_attn(h, keys, values, causal))
        if self.cross_attn is not None:
            x = x + self.dropout(self.cross_attn(self.cross_norm(x), *cross, source_mask))
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, (keys, values)


@dataclass
class TransformerEncoded:
    """The encoder's output for a batch.

    Attributes:
        memory: ``(B, S, D)`` source vectors ``x_i`` (what the output layer reads at the aligned position: the
            encoder's outputs, or the source embeddings with ``output_reads: embedding``).
        memory_keys: ``(B, S, A)`` the latent alignment's keys ``W_k x_i``.
        source_mask: ``(B, S)`` bool.
        cross: per decoder layer, the cross-attention's keys and values ``(B, H, S, D/H)`` (None without).
    """

    memory: Tensor
    memory_keys: Tensor
    source_mask: Tensor
    cross: list[tuple[Tensor, Tensor] | None]

    def select(self, index: Tensor) -> TransformerEncoded:
        """Reorder/duplicate rows (beam search)."""
        return TransformerEncoded(self.memory[index], self.memory_keys[index], self.source_mask[index],
                                  [None if c is None else (c[0][index], c[1][index]) for c in self.cross])


@dataclass
class TransformerState:
    """What incremental decoding keeps between steps: every decoder layer's self-attention keys and
    values ``(N, H, P, D/H)`` of the ``P = position`` tokens fed so far."""

    past: list[tuple[Tensor, Tensor] | None]
    position: int

    def select(self, index: Tensor) -> TransformerState:
        """Reorder/duplicate rows (beam search)."""
        return TransformerState([None if p is None else (p[0][index], p[1][index]) for p in self.past],
                                self.position)


class TransformerInferenceNetwork(nn.Module):
    """q(z | x, y): bidirectional Transformer encoders over the source and over ``y_1 .. y_n </s>``, and
    bilinear scores; position ``t`` of q aligns the word predicted at step ``t``."""

    def __init__(self, cfg: TransformerConfig, with_precision: bool = False):
        super().__init__()
        layers = cfg.inference_layers
        self.src_encoder = Encoder(cfg.d_model, cfg.heads, cfg.ffn_dim, layers, cfg.dropout, cfg.attention_dropout)
        self.tgt_encoder = Encoder(cfg.d_model, cfg.heads, cfg.ffn_dim, layers, cfg.dropout, cfg.attention_dropout)
        self.bilinear = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        #: the Dirichlet q's precision scores, one per target token (relaxed models only)
        self.precision = nn.Linear(cfg.d_model, 1) if with_precision else None

    def forward(self, src_x: Tensor, source_mask: Tensor, tgt_x: Tensor,
                target_mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """Embedded ``src_x (B, S, D)`` and ``tgt_x (B, T, D)`` (positions added) -> scores ``(B, T, S)``
        (unmasked) and precision scores ``(B, T)`` (None without a precision head)."""
        src_h = self.src_encoder(src_x, source_mask)  # (B, S, D)
        tgt_h = self.tgt_encoder(tgt_x, target_mask)  # (B, T, D)
        scores = torch.bmm(self.bilinear(tgt_h), src_h.transpose(1, 2))  # (B, T, S)
        precision = None if self.precision is None else self.precision(tgt_h).squeeze(-1)  # (B, T)
        return scores, precision


class LatentAlignmentTransformer(LatentOutput, nn.Module):
    """Encoder, decoder, latent alignment prior, output head and (optional) inference network.

    The same interface as ``varattn.nmt.model.LatentAlignmentNMT`` (``problem``, ``loss``, ``score``,
    ``encode``, ``initial_state``, ``decode_step``, ``head``, ``prior_precision``, ``inference``), so
    training, evaluation, beam search and alignment treat both alike.
    """

    def __init__(self, cfg: TransformerConfig, with_inference: bool, with_precision: bool = False):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.src_embed = nn.Embedding(cfg.src_vocab_size, d)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = Encoder(d, cfg.heads, cfg.ffn_dim, cfg.encoder_layers, cfg.dropout, cfg.attention_dropout)
        self.decoder = nn.ModuleList(DecoderLayer(d, cfg.heads, cfg.ffn_dim, cfg.dropout, cfg.attention_dropout,
                                                  cfg.cross_attention) for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.align_query = nn.Linear(d, cfg.attention_dim, bias=False)
        self.align_key = nn.Linear(d, cfg.attention_dim, bias=False)
        self.head = LinearSoftmaxHead(d, d, cfg.output_hidden, cfg.tgt_vocab_size, cfg.dropout)
        self.inference = TransformerInferenceNetwork(cfg, with_precision) if with_inference else None
        #: the prior Dirichlet's precision scores from the query (relaxed models only)
        self.precision = nn.Linear(d, 1) if with_precision else None
        self._init_weights()
        if cfg.tie_embeddings:
            self.head.generator.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.cfg.d_model ** -0.5)

    @property
    def device(self) -> torch.device:
        return self.src_embed.weight.device

    def embed(self, table: nn.Embedding, ids: Tensor, start: int = 0) -> Tensor:
        """``ids (B, N)`` -> ``(B, N, D)``: scaled embeddings plus the positions ``start ..``, then dropout."""
        n = ids.shape[1]
        if start + n > self.cfg.max_positions:
            raise ValueError(f"sequence of {start + n} tokens is longer than model.max_positions "
                             f"({self.cfg.max_positions})")
        x = table(ids) * math.sqrt(self.cfg.d_model) + sinusoids(n, self.cfg.d_model, start, ids.device)
        return self.dropout(x)

    # -- encoder -------------------------------------------------------------------------
    def encode(self, src: Tensor, src_lengths: Tensor, src_x: Tensor | None = None) -> TransformerEncoded:
        """``src (B, S)`` -> ``TransformerEncoded`` (memory ``(B, S, D)``); ``src_x`` the embedded source, if
        already computed."""
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < src_lengths[:, None].to(src.device)
        if src_x is None:
            src_x = self.embed(self.src_embed, src)
        states = self.encoder(src_x, mask)  # (B, S, D)
        cross = [None if layer.cross_attn is None else layer.cross_attn.keys_values(states) for layer in self.decoder]
        if self.cfg.output_reads == "embedding":
            memory = self.dropout(self.src_embed(src) * math.sqrt(self.cfg.d_model))  # (B, S, D), no positions
        else:
            memory = states
        return TransformerEncoded(memory, self.align_key(states), mask, cross)

    # -- decoder -------------------------------------------------------------------------
    def _prior_scores(self, query: Tensor, enc: TransformerEncoded, topk: int | None) -> Tensor:
        """``query (B, T, D)`` -> prior scores ``(B, T, S)``: ``-inf`` at padding and outside the top-k."""
        q = self.align_query(query)  # (B, T, A)
        scores = torch.matmul(q, enc.memory_keys.transpose(1, 2)) / math.sqrt(q.shape[-1])  # (B, T, S)
        scores = full_precision(scores).masked_fill(~enc.source_mask[:, None, :], NEG_INF)
        return kmax(scores, topk)

    def _decoder(self, x: Tensor, enc: TransformerEncoded,
                 past: list[tuple[Tensor, Tensor] | None]) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Embedded target ``x (B, T, D)`` -> queries ``(B, T, D)`` and every layer's keys/values."""
        source_mask = enc.source_mask[:, None, None, :]  # (B, 1, 1, S)
        new_past = []
        for layer, layer_past, cross in zip(self.decoder, past, enc.cross):
            x, kv = layer(x, layer_past, cross, source_mask)
            new_past.append(kv)
        return self.decoder_norm(x), new_past

    def decode(self, tgt_in: Tensor, enc: TransformerEncoded, topk: int | None = None,
               tgt_x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher-forced pass over ``tgt_in (B, T)`` (``<s> y_1 .. y_n``) -> queries ``(B, T, D)`` and prior
        scores ``(B, T, S)``; ``tgt_x`` the embedded input, if already computed."""
        if tgt_x is None:
            tgt_x = self.embed(self.tgt_embed, tgt_in)
        queries, _ = self._decoder(tgt_x, enc, [None] * len(self.decoder))
        return queries, self._prior_scores(queries, enc, topk)

    def initial_state(self, batch_size: int, device: torch.device) -> TransformerState:
        return TransformerState([None] * len(self.decoder), 0)

    def decode_step(self, prev: Tensor, state: TransformerState, enc: TransformerEncoded,
                    topk: int | None = None) -> tuple[Tensor, Tensor, TransformerState]:
        """One incremental step: ``prev (N,)`` the previous tokens -> query ``(N, D)``, prior scores ``(N, S)``
        (``-inf`` at padding and outside the top-k) and the state with this step's keys and values added."""
        x = self.embed(self.tgt_embed, prev[:, None], state.position)  # (N, 1, D)
        query, past = self._decoder(x, enc, state.past)
        query = query[:, 0]  # (N, D)
        scores = self._prior_scores(query[:, None], enc, topk)[:, 0]  # (N, S)
        return query, scores, TransformerState(past, state.position + 1)

    # -- the latent layer ----------------------------------------------------------------
    def problem(self, batch: Batch, with_posterior: bool, topk: int | None = None) -> AlignmentProblem:
        """Run the networks on ``batch`` (moved to the model's device) and wrap their outputs for an objective."""
        batch = batch.to(self.device)
        src_x = self.embed(self.src_embed, batch.src)  # (B, S, D)
        enc = self.encode(batch.src, batch.src_lengths, src_x)
        queries, prior_scores = self.decode(batch.tgt_in, enc, topk)
        posterior_scores = posterior_precision = None
        if with_posterior:
            if self.inference is None:
                raise ValueError("this model was built without an inference network")
            tgt_x = self.embed(self.tgt_embed, batch.tgt_out)  # (B, T, D): y_1 .. y_n </s>
            posterior_scores, posterior_precision = self.inference(src_x, enc.source_mask, tgt_x, batch.tgt_mask)
        return self.alignment_problem(batch, queries, prior_scores, enc.memory, enc.source_mask, posterior_scores,
                                      posterior_precision)
