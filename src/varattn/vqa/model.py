"""The paper's VQA model with a latent alignment over image regions (notes C).

For a question ``x~`` (a 1-layer LSTM over word embeddings) and regions ``x_1..x_R`` (precomputed
features, or the cells of a small CNN's feature grid):

- prior ``p(z = i) ∝ exp(w^T tanh(W1 x_i + W2 x~))``;
- output ``f(x, z) = softmax(W_a drop(ReLU(W_o [x~ ; x_z] + b)))`` over the answers (a 1-layer MLP,
  dropout before the answer projection);
- inference network ``q(z = i | a) ∝ exp(u^T tanh(U1 (x_i ⊙ ReLU(V1 h_a)) + U2 (x~ ⊙ ReLU(V2 h_a))))``,
  where ``h_a`` is an embedding of the answer ``a``.

The latent layer sees one "target position" per answer: training uses one sampled answer per
question (``T = 1``), evaluation every in-vocabulary annotator answer (``T`` candidates).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from varattn.errors import VarattnError
from varattn.latent import (
    AlignmentProblem,
    ContextEmission,
    ContextPredictor,
    LinearSoftmaxHead,
    MaskedCategorical,
    Objective,
)

REGION_ENCODERS = ("cnn", "features")
CNN_REGIONS = ("wide", "local")


@dataclass
class VQAModelConfig:
    """Sizes of the model (``vqa2``: the paper's; ``easy``: two CPU cores).

    ``region_encoder`` is ``cnn`` (regions are the ``grid x grid`` cells of a CNN over the raw
    image, trained with the rest) or ``features`` (precomputed ``feature_dim``-wide regions).
    ``cnn_regions`` says what a CNN cell sees (see :class:`GridCNN`): ``local``, only its own patch of
    a ``cnn_grid x cnn_grid`` cut of the image; ``wide`` (the default of runs made before the option
    existed), the overlapping field of a conv and max-pool stack over the whole image.
    """

    num_words: int = 0
    num_answers: int = 0
    region_encoder: str = "features"
    feature_dim: int = 2048
    cnn_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    cnn_input_pool: int = 2
    cnn_batchnorm: bool = True
    cnn_regions: str = "wide"
    cnn_grid: int = 4
    embed_dim: int = 300
    question_hidden: int = 1024
    attention_dim: int = 1024
    output_hidden: int = 1024
    answer_embed_dim: int = 256
    inference_hidden: int = 1024
    dropout: float = 0.5
    enum_chunk_rows: int = 8192

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VQAModelConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise VarattnError(f"unknown model option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    @property
    def region_dim(self) -> int:
        return self.cnn_channels[-1] if self.region_encoder == "cnn" else self.feature_dim


class GridCNN(nn.Module):
    """Raw images ``(B, H, W, 3)`` uint8 -> regions ``(B, R, C)``: the cells of a conv feature grid.

    Each block is a 3x3 convolution (zero padding 1), batch normalisation (``batchnorm``), ReLU and 2x2
    max-pooling, after an average pooling of the input by ``input_pool``. Two ways to make cells:

    - ``regions="wide"``: the blocks run over the whole image and the final map's cells are the
      regions. With the ``easy`` sizes a 64x64 image becomes 32x32, then a 4x4 grid (R = 16) whose
      cells each see about a 44-pixel square of the original: every cell sees most of the picture.
    - ``regions="local"``: the image is cut into ``grid x grid`` patches and the same stack runs on
      each patch on its own (its zero padding stops at the patch's border), ending in a max over what
      is left of the patch: cell ``i`` (row-major) is a function of patch ``i``'s pixels only. With
      ``grid=4`` a 64x64 image gives 16 cells of 16x16 pixels.
    """

    def __init__(self, channels: list[int], input_pool: int = 1, batchnorm: bool = True, regions: str = "wide",
                 grid: int = 4):
        super().__init__()
        if regions not in CNN_REGIONS:
            raise VarattnError(f"cnn regions must be one of {', '.join(CNN_REGIONS)}, got {regions!r}")
        self.regions, self.grid = regions, grid
        local = regions == "local"
        layers, c_in = [nn.AvgPool2d(input_pool)] if input_pool > 1 else [], 3
        for c_out in channels:
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.ReLU(), nn.MaxPool2d(2, ceil_mode=local)]  # ceil: a small patch may reach 1x1 early
            c_in = c_out
        if local:
            layers.append(nn.AdaptiveMaxPool2d(1))
        self.net = nn.Sequential(*layers)

    def patches(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B * grid * grid, 3, H / grid, W / grid)``, patches in row-major order."""
        b, c, h, w = x.shape
        g = self.grid
        if h % g or w % g:
            raise VarattnError(f"a {h}x{w} image does not cut into a {g}x{g} grid of equal patches (model.cnn_grid)")
        x = x.reshape(b, c, g, h // g, g, w // g).permute(0, 2, 4, 1, 3, 5)  # (B, g, g, 3, h/g, w/g)
        return x.reshape(b * g * g, c, h // g, w // g)

    def forward(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2).float().div(255.0).sub(0.5)  # (B, 3, H, W)
        if self.regions == "local":
            cells = self.net(self.patches(x))  # (B * g * g, C, 1, 1)
            return cells.reshape(images.shape[0], self.grid * self.grid, -1)  # (B, g*g, C)
        grid = self.net(x)  # (B, C, h, w)
        return grid.flatten(2).transpose(1, 2)  # (B, h*w, C)


class QuestionEncoder(nn.Module):
    """Words ``(B, L)`` with lengths ``(B,)`` -> the last LSTM state ``(B, H)``."""

    def __init__(self, num_words: int, embed_dim: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(num_words, embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True)

    def forward(self, words: Tensor, lengths: Tensor) -> Tensor:
        emb = self.embed(words)  # (B, L, E)
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return h[-1]  # (B, H)


class ReLUSoftmaxHead(LinearSoftmaxHead):
    """``softmax(W_a drop(ReLU(W_o [x~ ; x_z] + b)))``: the notes' 1-layer ReLU MLP over ``[x_z ; x~]``."""

    def hidden(self, pre: Tensor) -> Tensor:
        return self.dropout(torch.relu(pre))


@dataclass
class Encoded:
    """A batch after the region and question encoders.

    Attributes:
        regions: ``(B, R, D)`` region vectors ``x_i``.
        region_mask: ``(B, R)`` bool, True at real regions.
        query: ``(B, Dq)`` the question vector ``x~``.
    """

    regions: Tensor
    region_mask: Tensor
    query: Tensor


class VQAModel(nn.Module):
    """See the module docstring; ``problem`` builds the ``AlignmentProblem`` every objective takes."""

    def __init__(self, cfg: VQAModelConfig, with_inference: bool = True, with_precision: bool = False):
        super().__init__()
        if cfg.num_words < 2 or cfg.num_answers < 1:
            raise VarattnError("the model needs a question vocabulary and at least one answer")
        self.cfg = cfg
        d, dq, a = cfg.region_dim, cfg.question_hidden, cfg.attention_dim
        self.cnn = None
        if cfg.region_encoder == "cnn":
            self.cnn = GridCNN(cfg.cnn_channels, cfg.cnn_input_pool, cfg.cnn_batchnorm, cfg.cnn_regions,
                               cfg.cnn_grid)
        self.question = QuestionEncoder(cfg.num_words, cfg.embed_dim, dq)
        # prior: w^T tanh(W1 x_i + W2 x~)
        self.prior_region = nn.Linear(d, a, bias=False)
        self.prior_query = nn.Linear(dq, a)
        self.prior_out = nn.Linear(a, 1, bias=False)
        self.head = ReLUSoftmaxHead(dq, d, cfg.output_hidden, cfg.num_answers, cfg.dropout)
        # the Dirichlet precision scores of prior and q (objectives with needs_precision: the relaxed model)
        self.prior_precision_head = nn.Linear(dq, 1) if with_precision else None
        self.post_precision_head = None
        # inference network: u^T tanh(U1 (x_i ⊙ ReLU(V1 h_a)) + U2 (x~ ⊙ ReLU(V2 h_a)))
        self.with_inference = with_inference
        if not with_inference:  # modes without q never build it
            return
        hi = cfg.inference_hidden
        self.answer_embed = nn.Embedding(cfg.num_answers, cfg.answer_embed_dim)
        self.gate_region = nn.Linear(cfg.answer_embed_dim, d)
        self.gate_query = nn.Linear(cfg.answer_embed_dim, dq)
        self.post_region = nn.Linear(d, hi, bias=False)
        self.post_query = nn.Linear(dq, hi)
        self.post_out = nn.Linear(hi, 1, bias=False)
        if with_precision:
            self.post_precision_head = nn.Linear(hi, 1)

    # -- encoders ----------------------------------------------------------------------------------
    def encode(self, words: Tensor, lengths: Tensor, regions: dict[str, Tensor]) -> Encoded:
        """Questions and ``regions`` (``images``, or ``features`` with ``region_mask``) -> ``Encoded``."""
        if self.cnn is not None:
            if "images" not in regions:
                raise VarattnError("this model reads raw images (region_encoder cnn), not region features")
            x = self.cnn(regions["images"])  # (B, R, C)
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        else:
            if "features" not in regions:
                raise VarattnError("this model reads region features (region_encoder features), not raw images")
            x, mask = regions["features"], regions["region_mask"]
            if x.shape[-1] != self.cfg.feature_dim:
                raise VarattnError(f"region features are {x.shape[-1]} wide; the model expects {self.cfg.feature_dim}")
        return Encoded(x, mask, self.question(words, lengths))

    def prior_scores(self, enc: Encoded) -> Tensor:
        """``(B, R)`` unnormalised prior scores."""
        h = torch.tanh(self.prior_region(enc.regions) + self.prior_query(enc.query).unsqueeze(1))  # (B, R, A)
        return self.prior_out(h).squeeze(-1)

    def posterior_scores(self, enc: Encoded, answers: Tensor) -> Tensor:
        """``(B, T, R)`` inference-network scores for answers ``(B, T)``."""
        if not self.with_inference:
            raise VarattnError("this model has no inference network (its mode does not use q)")
        h_a = self.answer_embed(answers)  # (B, T, Ha)
        gate_x = torch.relu(self.gate_region(h_a))  # (B, T, D)
        gate_q = torch.relu(self.gate_query(h_a))  # (B, T, Dq)
        region_part = self.post_region(enc.regions.unsqueeze(1) * gate_x.unsqueeze(2))  # (B, T, R, Hi)
        query_part = self.post_query(enc.query.unsqueeze(1) * gate_q)  # (B, T, Hi)
        return self.post_out(torch.tanh(region_part + query_part.unsqueeze(2))).squeeze(-1)  # (B, T, R)

    def posterior_precision(self, enc: Encoded, answers: Tensor) -> Tensor | None:
        """``(B, T)`` q's Dirichlet precision scores for answers ``(B, T)``; None without the head."""
        if self.post_precision_head is None:
            return None
        gate_q = torch.relu(self.gate_query(self.answer_embed(answers)))  # (B, T, Dq)
        return self.post_precision_head(torch.tanh(self.post_query(enc.query.unsqueeze(1) * gate_q))).squeeze(-1)

    # -- the latent layer ---------------------------------------------------------------------------
    def problem(self, enc: Encoded, answers: Tensor, answer_mask: Tensor, posterior: bool) -> AlignmentProblem:
        """The alignment problem of answers ``(B, T)`` (``answer_mask (B, T)``); q only if ``posterior``."""
        b, t = answers.shape
        prior = self.prior_scores(enc).unsqueeze(1).expand(b, t, -1)  # (B, T, R)
        query = enc.query.unsqueeze(1).expand(b, t, -1)  # (B, T, Dq)
        emission = ContextEmission(self.head, query, enc.regions, answers, answer_mask,
                                   chunk_rows=self.cfg.enum_chunk_rows, source_mask=enc.region_mask)
        post = self.posterior_scores(enc, answers) if posterior else None
        prior_precision = None
        if self.prior_precision_head is not None:
            prior_precision = self.prior_precision_head(enc.query).expand(b, t)  # (B, 1) -> (B, T)
        post_precision = self.posterior_precision(enc, answers) if posterior else None
        return AlignmentProblem(prior, enc.region_mask, answer_mask, emission, post, prior_precision, post_precision)

    def prior(self, enc: Encoded) -> MaskedCategorical:
        """``p(z | x, x~)`` with batch shape ``(B, 1)`` over ``R`` regions."""
        return MaskedCategorical(self.prior_scores(enc).unsqueeze(1), enc.region_mask.unsqueeze(1))

    def predictor(self, enc: Encoded) -> ContextPredictor:
        """The output layer over every answer, one row per question (``N = B``, ``S = R``)."""
        return ContextPredictor(self.head, enc.query, enc.regions, source_mask=enc.region_mask)

    def region_log_probs(self, enc: Encoded) -> Tensor:
        """``(B, R, A)``: ``log f(x, i)`` over every answer for every region ``i`` (0 at masked regions)."""
        return self.predictor(enc).log_probs_each()

    def answer_log_probs(self, enc: Encoded, objective: Objective) -> Tensor:
        """``(B, A)`` log-probabilities of every answer under ``objective``'s predictive rule
        (``Objective.predict_log_probs``: the exact marginal over regions, or the output at the prior's mean)."""
        scores = self.prior_scores(enc).masked_fill(~enc.region_mask, float("-inf"))  # (B, R)
        return objective.predict_log_probs(self.predictor(enc), scores)
