"""scGPT adapter: parity with the official embed_data on the shared fixtures, key names, RNG modes, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scfm
from scfm._io.safe import torch_load
from scfm.models import CellData

torch = pytest.importorskip("torch")

ATOL = 1e-5


# ---- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fx(shared: Path) -> Path:
    return shared / "fixtures" / "scgpt"


@pytest.fixture(scope="module")
def model(fx: Path):
    return scfm.models.load("scgpt", checkpoint=fx / "tiny", device="cpu", random_weights=True)


@pytest.fixture
def adata(fx: Path) -> ad.AnnData:
    return ad.read_h5ad(fx / "input_pbmc200.h5ad")


@pytest.fixture(scope="module")
def state(fx: Path) -> dict:
    return torch_load(fx / "tiny" / "best_model.pt")


def _folder(tmp_path: Path, fx: Path, state: dict, vocab: dict | None = None) -> Path:
    """A model folder with the fixture's args.json and vocab.json (linked) and the given state dict."""
    d = tmp_path / "model"
    d.mkdir()
    os.symlink(fx / "tiny" / "args.json", d / "args.json")
    if vocab is None:
        os.symlink(fx / "tiny" / "vocab.json", d / "vocab.json")
    else:
        (d / "vocab.json").write_text(json.dumps(vocab))
    torch.save(state, d / "best_model.pt")
    return d


def _snapshot(a: ad.AnnData) -> tuple:
    return (set(a.obsm), set(a.uns), list(a.obs.columns), list(a.var.columns), set(a.varm), a.shape)


# ---- parity: tokens, embeddings, internals ----------------------------------------------------------------
@pytest.mark.parametrize("max_length", [1200, 5000])
def test_collated_tokens_exact(model, adata, fx, max_length):
    ref = dict(np.load(fx / f"collated_maxlen{max_length}.npz"))
    tok = model.tokenize(CellData(adata), max_length=max_length, seed=0)
    assert np.array_equal(tok.lengths, ref["n_tokens"])
    assert list(ref["obs_names"]) == list(adata.obs_names)
    for i in range(adata.n_obs):
        o, n = tok.offsets[i], ref["n_tokens"][i]
        assert np.array_equal(tok.genes[o : o + n], ref["gene"][i, :n]), i
        assert np.array_equal(tok.values[o : o + n], ref["expr"][i, :n]), i
    # beyond each cell's tokens the official tensors hold only padding
    assert all((ref["gene"][i, n:] == model.pad_id).all() for i, n in enumerate(ref["n_tokens"]))


@pytest.mark.parametrize("max_length", [1200, 5000])
def test_embeddings_match_official(model, adata, fx, max_length):
    ref = np.load(fx / f"cell_emb_maxlen{max_length}.npy")
    names = (fx / "cell_emb_obs_names.txt").read_text().split()
    assert names == list(adata.obs_names)
    before = adata.X.copy()
    scfm.tl.embed(adata, model=model, max_length=max_length, seed=0)
    emb = adata.obsm["X_scgpt"]
    assert emb.dtype == np.float32 and emb.shape == ref.shape
    np.testing.assert_allclose(emb, ref, atol=ATOL, rtol=0)
    assert (before != adata.X).nnz == 0
    prov = adata.uns["scfm"]["X_scgpt"]
    assert prov["params"]["max_length"] == max_length and prov["params"]["rng"] == "official"
    assert prov["coverage"]["n_genes_in_vocab"] == 14076
    assert prov["coverage"]["n_cells_subsampled"] == (147 if max_length == 1200 else 0)
    assert prov["random_weights"]


def test_cls_raw_from_collated(model, fx):
    """The encoder on the official collated tensors gives the official un-normalised <cls> output."""
    ref = dict(np.load(fx / "collated_maxlen1200.npz"))
    with torch.inference_mode():
        cls = model.network(torch.from_numpy(ref["gene"][:64]).long(), torch.from_numpy(ref["expr"][:64]),
                            torch.from_numpy(ref["gene"][:64] == model.pad_id))
    np.testing.assert_allclose(cls.numpy(), ref["cls_raw"][:64], atol=ATOL, rtol=0)


def test_internals(model, adata, fx):
    ref = dict(np.load(fx / "internals_batch.npz"))
    sub = adata[ref["cell_index"]].copy()
    tok = model.tokenize(CellData(sub), max_length=1200, seed=0)
    from scfm.models.scgpt._tokenize import pad_batch

    genes, values = pad_batch(tok, np.arange(4), model.pad_id, model.config.pad_value)
    assert np.array_equal(genes, ref["gene"]) and np.array_equal(values, ref["expr"])
    assert np.array_equal(tok.n_genes, ref["n_nonzero_in_vocab"])
    mask = torch.from_numpy(genes == model.pad_id)
    assert np.array_equal(mask.numpy(), ref["src_key_padding_mask"])
    with torch.inference_mode():
        st = model.network.stages(torch.from_numpy(genes), torch.from_numpy(values), mask)
    keep = ~ref["src_key_padding_mask"]
    for k in ("gene_emb", "value_emb", "total_emb"):
        np.testing.assert_allclose(st[k].numpy(), ref[k], atol=ATOL, rtol=0, err_msg=k)
    for k in ("layer0_out", "layer1_out", "encode_out"):
        np.testing.assert_allclose(st[k].numpy()[keep], ref[k][keep], atol=ATOL, rtol=0, err_msg=k)
    np.testing.assert_allclose(st["encode_out"][:, 0].numpy(), ref["cls_raw"], atol=ATOL, rtol=0)
    scfm.tl.embed(sub, model=model, max_length=1200, seed=0, batch_size=4)
    np.testing.assert_allclose(sub.obsm["X_scgpt"], ref["cell_emb"], atol=ATOL, rtol=0)


# ---- gene embeddings and the gene network -----------------------------------------------------------------
def test_gene_embeddings_and_network(model, fx):
    ref = dict(np.load(fx / "gene_embeddings.npz"))
    genes = [g for g in ref["gene_names"] if not g.startswith("<")]
    n = len(genes)
    names = genes + ["NOT_A_GENE", "<cls>"]
    a = ad.AnnData(sp.csr_matrix((3, len(names)), dtype=np.float32), var=pd.DataFrame(index=names))
    scfm.tl.gene_embeddings(a, model=model)
    E = a.varm["scgpt_gene"]
    np.testing.assert_allclose(E[:n], ref["gene_emb"][:n], atol=ATOL, rtol=0)
    assert np.isnan(E[n:]).all()  # unknown gene; special tokens are not genes
    assert a.uns["scfm"]["scgpt_gene"]["n_genes_embedded"] == n
    scfm.tl.gene_embeddings(a, model=model, enc_norm=False, key_added="raw")
    np.testing.assert_allclose(a.varm["raw"][:n], ref["embedding_rows"][:n], atol=1e-7, rtol=0)

    k = 5
    scfm.tl.gene_similarity(a, use_rep="scgpt_gene", top_k=k)
    S = a.varp["scgpt_gene_similarity"].toarray()
    assert np.allclose(S, S.T)
    assert not S[n:].any() and not S[:, n:].any()  # genes without an embedding get no edges
    En = E[:n] / np.linalg.norm(E[:n], axis=1, keepdims=True)
    C = En.astype(np.float64) @ En.T.astype(np.float64)
    np.fill_diagonal(C, -np.inf)
    for i in range(n):
        top = np.argsort(-C[i])[:k]
        np.testing.assert_allclose(S[i, top], C[i, top], atol=1e-6)
    edges = scfm.tl.gene_similarity(a, use_rep="scgpt_gene", top_k=k, return_df=True)
    assert edges["similarity"].is_monotonic_decreasing and set(edges["gene1"]) <= set(genes)


# ---- checkpoint key names and loud failures ----------------------------------------------------------------
@pytest.mark.parametrize("layout", ["flash", "flash2"])
def test_flash_key_names_load(model, adata, fx, state, tmp_path, layout):
    def rename(k: str) -> str:
        if layout == "flash":
            return k.replace("self_attn.in_proj_", "self_attn.Wqkv.")
        return k.replace("self_attn.in_proj_", "self_attn._impl.Wqkv.").replace(
            "self_attn.out_proj.", "self_attn._impl.out_proj.")

    renamed = {rename(k): v for k, v in state.items()}
    released = {e["released_checkpoint_key"] for e in json.loads((fx / "state_dict_keys.json").read_text())["keys"]}
    if layout == "flash":
        assert set(renamed) == released
    m2 = scfm.models.load("scgpt", checkpoint=_folder(tmp_path, fx, renamed))
    for (k1, v1), (k2, v2) in zip(model.network.state_dict().items(), m2.network.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    sub = adata[:24].copy()
    e1 = scfm.tl.embed(sub, model=model, seed=0, copy=True).obsm["X_scgpt"]
    e2 = scfm.tl.embed(sub, model=m2, seed=0, copy=True).obsm["X_scgpt"]
    assert np.array_equal(e1, e2)


def test_every_fixture_key_is_placed_or_listed(model, fx):
    from scfm.models.scgpt._checkpoint import IGNORED_PREFIXES

    keys = json.loads((fx / "state_dict_keys.json").read_text())["keys"]
    loaded = set(model.network.state_dict())
    for e in keys:
        if e["used_by_cell_embedding"]:
            assert e["key"] in loaded
        else:
            assert e["key"].startswith(IGNORED_PREFIXES) and e["key"] in model.ignored_keys


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.update({"dsbn.bns.0.weight": torch.ones(32)}), "cannot place"),
        (lambda s: s.update({"transformer_encoder.layers.2.norm1.weight": torch.ones(32)}), "cannot place"),
        (lambda s: s.pop("transformer_encoder.layers.1.norm2.bias"), "lacks parameters"),
        (lambda s: s.pop("value_encoder.norm.weight"), "lacks parameters"),
        (lambda s: s.update({"transformer_encoder.layers.0.self_attn.Wqkv.weight":
                             s["transformer_encoder.layers.0.self_attn.in_proj_weight"]}), "twice"),
        (lambda s: s.update({"value_encoder.linear2.weight": torch.ones(32, 16)}), "shape"),
    ],
)
def test_bad_checkpoint_fails_loudly(fx, state, tmp_path, edit, match):
    s = dict(state)
    edit(s)
    with pytest.raises(ValueError, match=match):
        scfm.models.load("scgpt", checkpoint=_folder(tmp_path, fx, s))


def test_vocab_size_mismatch(fx, state, tmp_path):
    vocab = {t: i for t, i in json.loads((fx / "tiny" / "vocab.json").read_text()).items() if not t.startswith("<")}
    vocab.pop(max(vocab, key=vocab.get))  # one gene fewer: 60,693 genes + 3 appended special tokens
    with pytest.raises(ValueError, match="vocabulary has 60696 tokens"):
        scfm.models.load("scgpt", checkpoint=_folder(tmp_path, fx, dict(state), vocab=vocab))


def test_vocab_from_resources_folder(model, fx, shared, tmp_path):
    """A folder without vocab.json takes it from `resources=` (the registry puts the census vocabulary there)."""
    ckpt = tmp_path / "ckpt"
    res = tmp_path / "res"
    ckpt.mkdir()
    res.mkdir()
    for f in ("args.json", "best_model.pt"):
        os.symlink(fx / "tiny" / f, ckpt / f)
    os.symlink(shared / "resources" / "scgpt" / "default_census_vocab.json", res / "vocab.json")
    m2 = scfm.models.load("scgpt", checkpoint=ckpt, resources=res)
    assert m2.vocab == model.vocab
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        scfm.models.load("scgpt", checkpoint=ckpt)


def test_organ_release_without_files_says_what_to_do():
    with pytest.raises(FileNotFoundError, match="drive.google.com/drive/folders/1vf1ijfQSk7rGdDGpBntR5bi5g6gNt-Gx"):
        scfm.models.load("scgpt-brain")


def test_loader_errors(fx, tmp_path):
    with pytest.raises(FileNotFoundError, match="best_model.pt"):
        scfm.models.load("scgpt", checkpoint=tmp_path)
    with pytest.raises(TypeError, match="Unknown scGPT load option"):
        scfm.models.load("scgpt", checkpoint=fx / "tiny", max_length=100)


# ---- randomness: batch-size and chunk independence --------------------------------------------------------
def _embed(a, m, **kw):
    return scfm.tl.embed(a, model=m, copy=True, **kw).obsm["X_scgpt"]


@pytest.mark.parametrize("rng", ["official", "per_cell"])
def test_batch_and_chunk_independence(model, adata, rng, monkeypatch):
    a = adata[:24].copy()
    ref = _embed(a, model, seed=3, rng=rng, batch_size=24)
    monkeypatch.setattr(scfm.settings, "chunk_size", 7)
    for bs in (1, 5):
        np.testing.assert_allclose(_embed(a, model, seed=3, rng=rng, batch_size=bs), ref, atol=ATOL, rtol=0)


def test_per_cell_mode_independent_of_other_cells(model, adata):
    a = adata[:40].copy()
    full = _embed(a, model, seed=5, rng="per_cell")
    part = a[[30, 2, 17, 39, 8]].copy()  # other cells, other order
    np.testing.assert_allclose(_embed(part, model, seed=5, rng="per_cell"), full[[30, 2, 17, 39, 8]], atol=ATOL,
                               rtol=0)
    # the official stream does depend on the cells before (that is what rng='per_cell' fixes) ...
    off = _embed(a, model, seed=5)
    assert not np.allclose(_embed(part, model, seed=5), off[[30, 2, 17, 39, 8]], atol=ATOL, rtol=0)
    # ... and the seed changes tie-breaking and sampling in both modes
    assert not np.allclose(_embed(a, model, seed=6, rng="per_cell"), full, atol=ATOL, rtol=0)


def test_backed_input(model, fx, monkeypatch):
    monkeypatch.setattr(scfm.settings, "chunk_size", 64)  # streamed in chunks; the official stream continues
    a = ad.read_h5ad(fx / "input_pbmc200.h5ad", backed="r")
    try:
        scfm.tl.embed(a, model=model, seed=0, max_length=1200)
        np.testing.assert_allclose(a.obsm["X_scgpt"], np.load(fx / "cell_emb_maxlen1200.npy"), atol=ATOL, rtol=0)
    finally:
        a.file.close()


def test_bfloat16(model, adata):
    a = adata[:32].copy()
    e32 = _embed(a, model, seed=0)
    out = scfm.tl.embed(a, model=model, seed=0, precision="bfloat16", copy=True)
    e16 = out.obsm["X_scgpt"]
    assert e16.dtype == np.float32 and np.isfinite(e16).all()
    assert out.uns["scfm"]["X_scgpt"]["params"]["precision"] == "bfloat16"
    assert 0 < np.abs(e16 - e32).max() < 0.05


# ---- bad input ---------------------------------------------------------------------------------------------
def test_ensembl_names_without_symbols(model, adata):
    a = adata[:10].copy()
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    snap = _snapshot(a)
    with pytest.raises(ValueError, match=r"scfm\.pp\.map_gene_ids"):
        scfm.tl.embed(a, model=model)
    with pytest.raises(ValueError, match=r"scfm\.pp\.map_gene_ids"):
        scfm.tl.gene_embeddings(a, model=model)
    assert _snapshot(a) == snap


def test_ensembl_names_with_symbol_column(model, adata):
    a = adata[:12].copy()
    ref = _embed(a, model, seed=0)
    a.var["gene_symbols"] = a.var_names.astype(str)
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    np.testing.assert_allclose(_embed(a, model, seed=0), ref, atol=ATOL, rtol=0)
    a.var["other"] = a.var["gene_symbols"]
    np.testing.assert_allclose(_embed(a, model, seed=0, gene_col="other"), ref, atol=ATOL, rtol=0)
    with pytest.raises(KeyError, match="gene_col"):
        scfm.tl.embed(a, model=model, gene_col="missing")


def test_too_few_vocab_genes(model, adata):
    a = adata[:10, :300].copy()
    snap = _snapshot(a)
    with pytest.raises(ValueError, match="min_genes_in_vocab"):
        scfm.tl.embed(a, model=model)
    assert _snapshot(a) == snap
    scfm.tl.embed(a, model=model, min_genes_in_vocab=100)
    assert np.isfinite(a.obsm["X_scgpt"][a.obs_names.isin(a.obs_names)]).any()


def test_mouse_genes(model, adata):
    a = adata[:5].copy()
    a.var_names = [g.capitalize() for g in a.var_names]
    a.var_names_make_unique()
    with pytest.raises(ValueError, match="mouse"):
        scfm.tl.embed(a, model=model)


def test_log_normalised_input(model, adata):
    import scanpy as sc

    a = adata[:30].copy()
    counts = _embed(a, model, seed=0)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    snap = _snapshot(a)
    with pytest.raises(ValueError, match="log-normalised"):
        scfm.tl.embed(a, model=model)
    assert _snapshot(a) == snap
    # binning is per-cell rank based: with the check switched off, log-normalised data give the same bins
    np.testing.assert_allclose(_embed(a, model, seed=0, check_counts=False), counts, atol=ATOL, rtol=0)
    a.X = a.X.copy()
    a.X.data[0] = -1.0
    with pytest.raises(ValueError, match="negative"):
        scfm.tl.embed(a, model=model, check_counts=False)


def test_cell_without_vocab_gene(model, adata):
    a = adata[:6].copy()
    X = a.X.tolil()
    X[2, :] = 0
    a.X = X.tocsr()
    scfm.tl.embed(a, model=model, seed=0)
    E = a.obsm["X_scgpt"]
    assert np.isnan(E[2]).all() and np.isfinite(np.delete(E, 2, axis=0)).all()
    assert a.obs["X_scgpt_valid"].tolist() == [True, True, False, True, True, True]


@pytest.mark.parametrize(("kw", "match"), [({"max_length": 1}, "max_length"), ({"rng": "global"}, "rng="),
                                           ({"seed": -1}, "seed"), ({"precision": "int8"}, "precision")])
def test_bad_options(model, adata, kw, match):
    a = adata[:3].copy()
    with pytest.raises(ValueError, match=match):
        scfm.tl.embed(a, model=model, **kw)
    assert "X_scgpt" not in a.obsm


# ---- registry ----------------------------------------------------------------------------------------------
def test_registry_entries():
    df = scfm.models.list(family="scgpt")
    expected = {"scgpt-human", "scgpt-continual-pretrained", "scgpt-brain", "scgpt-blood", "scgpt-heart",
                "scgpt-lung", "scgpt-kidney", "scgpt-pancancer"}
    assert expected <= set(df.index)
    assert (df.loc[list(expected), "embedding_dim"] == 512).all()
    assert all(df.loc[list(expected), "license"].str.startswith("MIT"))
    human = scfm.models.info("scgpt-human")
    vocab = next(f for f in human.resources if f.filename == "vocab.json")
    assert vocab.mirror_path == "resources/scgpt/default_census_vocab.json"
    assert {f.filename for f in human.checkpoint} == {"args.json", "best_model.pt"}
    assert all(f.url.startswith("https://drive.usercontent.google.com/") for f in human.checkpoint)


def test_census_vocab_matches_released_layout(shared, fx):
    """The mirrored census vocabulary + appended specials gives the released 60,697 token ids."""
    from scfm.models.scgpt._checkpoint import read_vocab

    census = read_vocab(shared / "resources" / "scgpt" / "default_census_vocab.json")
    released = read_vocab(fx / "tiny" / "vocab.json")
    assert census == released and len(census) == 60697


def test_cell_by_cell_attention_equals_masked_batch(model, monkeypatch):
    """On CPU a right-padded batch attends cell by cell; the masked batched call (accelerators) agrees."""
    import torch

    from scfm.models.scgpt._network import ScGPTEncoder

    net = model.network
    rng = np.random.default_rng(0)
    lengths = [50, 31, 2]
    genes = torch.full((3, 50), model.pad_id, dtype=torch.long)
    values = torch.full((3, 50), -2.0)
    for i, n in enumerate(lengths):
        genes[i, :n] = torch.from_numpy(rng.integers(0, 60000, n))
        values[i, :n] = torch.from_numpy(rng.integers(1, 51, n).astype(np.float32))
    kp = genes.eq(model.pad_id)
    assert ScGPTEncoder.cell_spans(kp, torch.device("cpu")) == lengths
    with torch.inference_mode():
        split = net(genes, values, kp)
        monkeypatch.setattr(ScGPTEncoder, "cell_spans", staticmethod(lambda *a: None))
        masked = net(genes, values, kp)
        single = torch.cat([net(genes[i : i + 1, :n], values[i : i + 1, :n], None) for i, n in enumerate(lengths)])
    torch.testing.assert_close(split, masked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split, single, atol=1e-5, rtol=1e-5)
