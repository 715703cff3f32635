"""scGPT on fixture variants: other model sizes and vocabularies, duplicate symbols, sub-sampling, few genes.

Each test builds a tiny model folder in the official layout (args.json, vocab.json, best_model.pt) and checks
scfm against an independent reference written here from the official ``embed_data`` contract (PROVENANCE.md
of the scGPT fixture): ``torch.nn.TransformerEncoder`` for the transformer, the official seeded random stream
(``np.random.seed``, ``torch.manual_seed``, one int64 draw, then per cell ``np.random.rand(n)`` and, when
sampled, ``torch.randperm(n)``), consecutive batches in obs order padded to the longest cell.
No official code and no shared mirror needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scfm

torch = pytest.importorskip("torch")
nn = torch.nn

ATOL = 1e-5
N_GENES = 60
GENES = [f"G{i}" for i in range(N_GENES)]


class _Reference(nn.Module):
    """The official ``TransformerModel`` encoder path, same parameter names (decoder heads left out)."""

    def __init__(self, ntoken: int, d: int, nhead: int, d_hid: int, nlayers: int):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.embedding = nn.Embedding(ntoken, d)
        self.encoder.enc_norm = nn.LayerNorm(d)
        self.value_encoder = nn.Module()
        self.value_encoder.linear1 = nn.Linear(1, d)
        self.value_encoder.linear2 = nn.Linear(d, d)
        self.value_encoder.norm = nn.LayerNorm(d)
        layer = nn.TransformerEncoderLayer(d, nhead, d_hid, dropout=0.0, batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)
        g = torch.Generator().manual_seed(nlayers * 100 + d)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g) + (1.0 if p.ndim == 1 and p.shape[0] == d else 0.0))
        self.eval()

    def cls(self, genes: torch.Tensor, values: torch.Tensor, pad_id: int) -> np.ndarray:
        ve = self.value_encoder
        x = self.encoder.enc_norm(self.encoder.embedding(genes))
        v = ve.norm(ve.linear2(torch.relu(ve.linear1(values.clamp(max=512).unsqueeze(-1)))))
        with torch.no_grad():
            out = self.transformer_encoder(x + v, src_key_padding_mask=genes.eq(pad_id))
        return out[:, 0].numpy()


def _bin(v: np.ndarray) -> np.ndarray:
    edges = np.quantile(v, np.linspace(0, 1, 50))
    left, right = np.digitize(v, edges), np.digitize(v, edges, right=True)
    return np.ceil(np.random.rand(len(v)) * (right - left) + left).astype(np.int64).astype(np.float32)


def _reference_embed(ref: _Reference, X: np.ndarray, ids: np.ndarray, vocab: dict, *, max_length: int,
                     batch_size: int, seed: int, pad_value: float = -2.0) -> np.ndarray:
    """Official ``embed_data`` on dense counts ``X`` whose columns have vocabulary ids ``ids`` (-1 = not in it)."""
    keep = ids >= 0
    X, ids = X[:, keep], ids[keep]
    pad_id, cls_id = vocab["<pad>"], vocab["<cls>"]
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_()
    cells = []
    for row in X:
        nz = np.nonzero(row)[0]
        g = np.concatenate([[cls_id], ids[nz]])
        e = np.concatenate([[pad_value], _bin(row[nz].astype(np.float32))]).astype(np.float32)
        if len(g) > max_length:
            idx = np.concatenate([[0], torch.randperm(len(g) - 1)[: max_length - 1].numpy() + 1])
            g, e = g[idx], e[idx]
        cells.append((g, e))
    out = []
    for b in range(0, len(cells), batch_size):
        batch = cells[b : b + batch_size]
        width = min(max_length, max(len(g) for g, _ in batch))
        G = np.full((len(batch), width), pad_id, dtype=np.int64)
        E = np.full((len(batch), width), pad_value, dtype=np.float32)
        for i, (g, e) in enumerate(batch):
            G[i, : len(g)], E[i, : len(e)] = g, e
        out.append(ref.cls(torch.from_numpy(G), torch.from_numpy(E), pad_id))
    emb = np.concatenate(out)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _model_folder(tmp_path: Path, *, tokens: list[str], d: int = 8, nhead: int = 2, d_hid: int = 12,
                  nlayers: int = 2, layout: str = "std") -> tuple[Path, _Reference, dict]:
    """An official-layout model folder; ``<pad>``/``<cls>``/``<eoc>`` appended as embed_data does."""
    vocab = {t: i for i, t in enumerate(tokens)}
    for s in ("<pad>", "<cls>", "<eoc>"):
        vocab.setdefault(s, len(vocab))
    ref = _Reference(len(vocab), d, nhead, d_hid, nlayers)
    state = ref.state_dict()
    if layout == "flash":
        state = {k.replace("self_attn.in_proj_", "self_attn.Wqkv."): v for k, v in state.items()}
    folder = tmp_path / f"model_{layout}_{nlayers}_{nhead}"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(dict(zip(tokens, range(len(tokens)), strict=True))))
    args = {"embsize": d, "nheads": nhead, "d_hid": d_hid, "nlayers": nlayers, "n_layers_cls": 3, "dropout": 0.2,
            "pad_token": "<pad>", "pad_value": -2, "n_bins": 51, "max_seq_len": 1200}
    (folder / "args.json").write_text(json.dumps(args))
    torch.save(state, folder / "best_model.pt")
    return folder, ref, vocab


def _counts(n_cells: int, n_genes: int, seed: int = 0) -> np.ndarray:
    r = np.random.default_rng(seed)
    X = r.poisson(r.gamma(0.6, 3.0, size=(n_cells, n_genes))).astype(np.float32)
    X[r.random(X.shape) < 0.35] = 0
    return X


@pytest.fixture
def _torch1():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- regression: a model with a small gene vocabulary works with the default min_genes_in_vocab ------------
def test_small_vocabulary_default_threshold(tmp_path, _torch1):
    """min_genes_in_vocab (default 500) is capped at a tenth of the gene vocabulary.

    Before the cap, any model whose vocabulary has fewer than 500 genes refused every dataset by default
    (the official embed_data has no threshold).
    """
    folder, ref, vocab = _model_folder(tmp_path, tokens=GENES)
    m = scfm.models.load("scgpt", checkpoint=folder)
    X = _counts(9, N_GENES)
    a = ad.AnnData(sp.csr_matrix(X), var=pd.DataFrame(index=GENES))
    scfm.tl.embed(a, model=m, max_length=1200, seed=0)
    expected = _reference_embed(ref, X, np.arange(N_GENES), vocab, max_length=1200, batch_size=64, seed=0)
    np.testing.assert_allclose(a.obsm["X_scgpt"], expected, atol=ATOL, rtol=0)
    # the cap is ceil(60 / 10) = 6 genes: 5 matching genes are still refused, 6 are accepted
    names = GENES[:5] + [f"NOPE{i}" for i in range(N_GENES - 5)]
    b = ad.AnnData(sp.csr_matrix(X), var=pd.DataFrame(index=names))
    with pytest.raises(ValueError, match="min_genes_in_vocab"):
        scfm.tl.embed(b, model=m)
    b.var_names = GENES[:6] + names[6:]
    scfm.tl.embed(b, model=m)
    assert np.isfinite(b.obsm["X_scgpt"][np.count_nonzero(X[:, :6], axis=1) > 0]).all()


# ---- parity with the official contract on input / model variants ------------------------------------------
@pytest.mark.parametrize(
    ("nlayers", "nhead", "layout", "max_length", "batch_size"),
    [(2, 2, "std", 1200, 64), (1, 1, "flash", 8, 3), (3, 4, "std", 5, 1), (2, 8, "flash", 20, 7)],
)
def test_variants_match_reference(tmp_path, _torch1, nlayers, nhead, layout, max_length, batch_size):
    """Duplicate symbols (both columns are tokens), genes outside the vocabulary, sub-sampling, few-gene cells,
    a cell without any vocabulary gene (NaN; the official code fails on it), flash-attn key names."""
    tokens = GENES[::-1] + ["<cls>"]  # specials not at the end; <cls> present, <pad>/<eoc> appended
    folder, ref, vocab = _model_folder(tmp_path, tokens=tokens, d=16, nhead=nhead, d_hid=24, nlayers=nlayers,
                                       layout=layout)
    m = scfm.models.load("scgpt", checkpoint=folder)
    names = GENES[:40] + GENES[10:20] + ["FAKE1", "FAKE2", "FAKE1"] + GENES[40:]  # 10 duplicated symbols
    X = _counts(14, len(names), seed=nlayers)
    ids = np.array([vocab.get(n, -1) for n in names])
    X[2, ids >= 0] = 0  # only out-of-vocabulary genes expressed
    X[3] = 0
    X[3, [5, 45]] = 4  # a gene and its duplicate, nothing else: a single value tied with itself
    X[4] = 0
    X[4, 7] = 1  # a single gene
    keep = np.arange(len(X)) != 2
    a = ad.AnnData(sp.csr_matrix(X), var=pd.DataFrame(index=names))
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    scfm.tl.embed(a, model=m, max_length=max_length, seed=7, batch_size=batch_size)
    E = a.obsm["X_scgpt"]
    assert np.isnan(E[2]).all() and a.obs["X_scgpt_valid"].tolist() == keep.tolist()
    expected = _reference_embed(ref, X[keep], ids, vocab, max_length=max_length, batch_size=batch_size, seed=7)
    np.testing.assert_allclose(E[keep], expected, atol=ATOL, rtol=0)

    # the same genes named in a var column with Ensembl-like var_names
    b = ad.AnnData(sp.csr_matrix(X[keep]), var=pd.DataFrame({"feature_name": names},
                                                            index=[f"ENSG{i:011d}" for i in range(len(names))]))
    scfm.tl.embed(b, model=m, max_length=max_length, seed=7, batch_size=batch_size, gene_col="feature_name")
    np.testing.assert_allclose(b.obsm["X_scgpt"], expected, atol=ATOL, rtol=0)

    # gene embeddings: encoder(id) = LayerNorm(Embedding(id)); duplicates get the same row, unknown genes NaN
    scfm.tl.gene_embeddings(a, model=m)
    G = a.varm["scgpt_gene"]
    with torch.no_grad():
        want = ref.encoder.enc_norm(ref.encoder.embedding(torch.from_numpy(ids[ids >= 0]))).numpy()
    np.testing.assert_allclose(G[ids >= 0], want, atol=ATOL, rtol=0)
    assert np.isnan(G[ids < 0]).all()
