"""Geneformer in-silico perturbation, computed as the official ``InSilicoPerturber`` does it.

The official code (``in_silico_perturber.py`` / ``perturber_utils.py``, ``genes_to_perturb=[...]``, i.e. a
gene *set* perturbed together once per cell) is reproduced here for one perturbation at a time; a list of
genes without ``combine`` simply runs one perturbation per gene. What is reproduced, and where scfm deliberately
differs, is listed below (labels P1–P10 refer to the quirks documented with the parity fixtures).

Inputs (per cell, the Geneformer model input: rank value encoding, V2 with ``<cls>`` … ``<eos>``)
---------------------------------------------------------------------------------------------------
* **Which cells** (P2): ``delete`` (and ``inhibit`` / ``activate``) perturb only the cells whose model input
  contains *all* the perturbed genes; the other cells get NaN. ``overexpress`` perturbs every cell. A gene that
  is expressed but ranked beyond the model input size is not "in the cell" (it is not in the model input).
  A gene that no cell has gives an all-NaN column, a warning and ``n_cells_expressing = 0`` in the summary.
* **Perturbed index** (P3): the first occurrence of each gene token in the model input.
* **delete** (P4): the gene tokens are removed (V2 keeps ``<cls>`` / ``<eos>``).
* **overexpress** (P5): the genes are removed where present, then inserted, in the given order, at the front
  (after ``<cls>`` for V2); an input that is now longer than the model's ``max_position_embeddings`` is cut
  (V2 keeps ``<eos>``).
* **Overflow** (P6): the original cell is shortened by ``n_overflow = len(perturbed) + n_added - max_len`` tokens
  (the official formula, which counts the inserted genes twice) so that the two inputs hold the same genes.
  This is reproduced exactly, because it changes the V2 ``<cls>`` value of a cell one token short of the limit.
* **inhibit / activate** (not available in the official release, where they are announced but refused): the
  rule of the official documentation is implemented. The cell's genes are split into rank quartiles; with
  ``rank_shift=s`` a gene in quartile *q* (1 = highest expressed) moves to the middle of quartile ``q - s``
  (activate; to the front when ``q - s < 1``) or ``q + s`` (inhibit; to the end when ``q + s > 4``); the
  middle of quartile *t* of *G* genes is index ``floor((t - 0.5) * G / 4)`` among the cell's other genes. Cells
  lacking the gene are not perturbed (NaN). No official values exist to compare with.

What is compared (P7)
---------------------
Each input gets its own forward pass; the hidden states of layer ``layer_to_quant`` are compared position by
position with ``torch.nn.CosineSimilarity`` (eps 1e-8), after removing from the original the perturbed
positions and from the perturbed input the inserted / moved genes (and, V2, ``<cls>`` and ``<eos>``), so each
remaining gene is compared with itself.

* ``pooling="mean"`` (official V1 ``emb_mode='cell'``): the cell value is the **mean of these per-gene cosine
  similarities** (not the cosine of mean cell embeddings).
* ``pooling="cls"`` (official V2 ``emb_mode='cls'``): the cosine similarity of the ``<cls>`` hidden states.
* ``pooling="mean"`` on V2 is an **scfm extension** (the official code refuses ``emb_mode='cell'`` for V2 data,
  P1): the same mean of per-gene cosine similarities, ``<cls>`` / ``<eos>`` excluded.
* Gene-level shifts (official ``*_and_gene`` modes, P9): the per-gene cosine similarities, attributed to the
  other genes of the cell in their original order.

Differences from the official code (defects fixed)
--------------------------------------------------
* **P8**: the official V1 set perturbation compares whole padded minibatches, so ``overexpress`` crashes as soon
  as a minibatch mixes a cell containing the gene (its original is one position shorter after the gene is
  removed) with the longest cell lacking it. scfm builds the compared positions **per cell** from its own length,
  which is what the official code computes whenever it runs (``forward_batch_size=1``); the values do not depend
  on the batch size.
* The official V2 slices (``[:, 1:-1]``, ``[:, 1 + n:-1]``, P7) act on the padded minibatch width, so a shorter
  cell keeps its ``<eos>`` and padding positions in the compared tensor. Those positions are never attributed to
  a gene (each cell's gene list is cut to its own genes) and the cell value is the ``<cls>`` state, so the padding
  changes no reported value; scfm therefore compares per cell as well (checked against the official values,
  computed with ``forward_batch_size=8``).
* Where the overflow formula (P6) leaves the original with fewer genes than the perturbed input compares (the
  official code then fails with a size mismatch, or with larger minibatches compares padding), scfm compares
  the genes both inputs share.
* A cell with no gene left to compare gets NaN (the official code would divide by zero or fail), except for
  ``pooling="cls"``, where its ``<cls>`` states are compared as officially.

Goal state (official ``cell_states_to_model``)
----------------------------------------------
With ``goal_state=(obs_column, value)`` the centroid of the *original* cell embeddings of the cells in that
group is the target (``pooling="cls"``: ``<cls>`` state; ``"mean"``: mean over the cell's genes, as
``EmbExtractor`` ``emb_mode='cell'``), and per cell and perturbation the shift towards it is
``cos(perturbed, goal) - cos(original, goal)`` (official ``cos_sim_shift``; positive = closer to the goal).
Unlike the official code, every cell is scored (the official one keeps only the start-state cells).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "KINDS",
    "TokenSpec",
    "PerturbedCell",
    "find_tokens",
    "perturb_cell",
    "overflow",
    "IspValues",
    "compute_isp",
    "resolve_genes",
    "perturb",
]

KINDS = ("delete", "overexpress", "inhibit", "activate")
POOLINGS = ("mean", "cls")

#: ``forward(input_ids, lengths) -> hidden states`` of one padded batch: ``input_ids`` is an int64 ``[B, L]``
#: tensor (right-padded), ``lengths`` an int64 ``[B]`` tensor; the result is ``[B, L, H]`` (any float dtype).
ForwardFn = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class TokenSpec:
    """What the perturbation rules need to know about the model input.

    Parameters
    ----------
    max_len
        The model's ``max_position_embeddings`` (2,048 for V1, 4,096 for V2).
    cls_id, eos_id
        Token ids of ``<cls>`` / ``<eos>`` (V2); ``None`` for V1 (no special tokens).
    pad_id
        Padding token id.
    """

    max_len: int
    cls_id: int | None = None
    eos_id: int | None = None
    pad_id: int = 0

    @property
    def special(self) -> bool:
        """Whether inputs start with ``<cls>`` and end with ``<eos>`` (Geneformer V2)."""
        return self.cls_id is not None and self.eos_id is not None


@dataclass
class PerturbedCell:
    """The two model inputs of one cell and the positions that are compared.

    ``orig_keep[j]`` of the original is compared with ``pert_keep[j]`` of the perturbed input, for
    ``j < n_compared``; both point to the same gene.
    """

    orig: np.ndarray
    pert: np.ndarray
    perturb_index: np.ndarray
    n_overflow: int
    orig_keep: np.ndarray
    pert_keep: np.ndarray

    @property
    def n_compared(self) -> int:
        return int(min(len(self.orig_keep), len(self.pert_keep)))

    @property
    def affected(self) -> np.ndarray:
        """Token ids of the compared genes (the cell's other genes, in original order)."""
        return self.orig[self.orig_keep[: self.n_compared]]


def find_tokens(ids: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
    """Positions of the first occurrence of each token of ``tokens`` present in ``ids`` (in ``tokens`` order)."""
    ids = np.asarray(ids)
    out = []
    for t in tokens:
        hit = np.flatnonzero(ids == t)
        if hit.size:
            out.append(int(hit[0]))
    return np.asarray(out, dtype=np.int64)


def overflow(max_len: int, perturbed_len: int, n_tokens: int, n_present: int) -> int:
    """Official ``calc_n_overflow``: ``perturbed_len + (n_tokens - n_present) - max_len`` (P6).

    ``perturbed_len`` is the length *after* insertion and truncation, so the added genes are counted twice:
    a cell one token short of ``max_len`` that lacks the gene gets ``n_overflow = 1`` although nothing was cut.
    """
    return int(perturbed_len + (n_tokens - n_present) - max_len)


def _gene_positions(n: int, spec: TokenSpec) -> np.ndarray:
    """Positions of genes (not ``<cls>`` / ``<eos>``) in an input of length ``n``."""
    if spec.special:
        return np.arange(1, max(n - 1, 1), dtype=np.int64)
    return np.arange(n, dtype=np.int64)


def _shift_targets(pos: np.ndarray, n_genes: int, kind: str, shift: int) -> np.ndarray:
    """Target rank (0 = front) of genes at gene ranks ``pos`` for inhibit / activate by ``shift`` quartiles."""
    quart = np.minimum((4 * pos) // n_genes, 3)  # 0 = highest expressed quarter
    target_q = quart - shift if kind == "activate" else quart + shift
    middle = np.floor((target_q + 0.5) * n_genes / 4).astype(np.int64)
    return np.where(target_q < 0, 0, np.where(target_q > 3, n_genes, middle))


def perturb_cell(
    ids: np.ndarray, tokens: Sequence[int], kind: str, spec: TokenSpec, *, rank_shift: int = 1
) -> PerturbedCell | None:
    """Build the original and perturbed model inputs of one cell.

    Parameters
    ----------
    ids
        The cell's model input (Geneformer tokens, V2 with ``<cls>`` … ``<eos>``).
    tokens
        Token ids of the genes perturbed together.
    kind
        ``'delete'``, ``'overexpress'``, ``'inhibit'`` or ``'activate'``.
    spec
        Model input facts.
    rank_shift
        Quartiles to move a gene by (inhibit / activate).

    Returns
    -------
    ``None`` when the cell is not perturbed (delete / inhibit / activate and the cell lacks one of the genes,
    or, V1, no gene would remain to compare), else the two inputs and compared positions. A V2 cell left with
    ``<cls>`` and ``<eos>`` only is kept: its ``<cls>`` state can still be compared.
    """
    ids = np.asarray(ids, dtype=np.int64)
    tokens = [int(t) for t in tokens]
    n = len(tokens)
    idx = find_tokens(ids, tokens)
    tok_arr = np.asarray(tokens, dtype=np.int64)
    if kind in ("delete", "inhibit", "activate") and len(idx) < n:
        return None
    n_over = 0
    if kind == "delete":
        orig = ids
        pert = np.delete(ids, idx)
        pert_keep = _gene_positions(len(pert), spec)
    elif kind == "overexpress":
        body = np.delete(ids, idx)
        at = 1 if spec.special else 0
        pert = np.concatenate([body[:at], tok_arr, body[at:]])
        if len(pert) > spec.max_len:
            pert = np.concatenate([pert[: spec.max_len - 1], pert[-1:]]) if spec.special else pert[: spec.max_len]
        n_over = overflow(spec.max_len, len(pert), n, len(idx))
        orig = ids
        if n_over > 0:
            cut = len(ids) - n_over
            orig = np.concatenate([ids[: cut - 1], ids[-1:]]) if spec.special else ids[:cut]
        start = 1 + n if spec.special else n
        stop = len(pert) - 1 if spec.special else len(pert)
        pert_keep = np.arange(start, max(stop, start), dtype=np.int64)
    elif kind in ("inhibit", "activate"):
        genes_pos = _gene_positions(len(ids), spec)
        genes = ids[genes_pos]
        rel = idx - genes_pos[0] if len(genes_pos) else idx
        targets = _shift_targets(rel, len(genes), kind, int(rank_shift))
        rest = np.delete(genes, rel)
        order = np.argsort(targets, kind="stable")
        new = list(rest)
        for k in order:  # insert in ascending target order (combined genes)
            new.insert(int(min(targets[k], len(new))), int(genes[rel[k]]))
        new = np.asarray(new, dtype=np.int64)
        pert = np.concatenate([ids[:1], new, ids[-1:]]) if spec.special else new
        orig = ids
        moved = np.isin(pert, tok_arr)
        gp = _gene_positions(len(pert), spec)
        pert_keep = gp[~moved[gp]]
    else:
        raise ValueError(f"perturbation={kind!r}; use one of {KINDS}.")
    gene_pos = _gene_positions(len(orig), spec)
    orig_keep = gene_pos[~np.isin(gene_pos, idx)]
    cell = PerturbedCell(orig=orig, pert=pert, perturb_index=idx, n_overflow=n_over,
                         orig_keep=orig_keep, pert_keep=pert_keep)
    if len(pert) == 0 or (not spec.special and cell.n_compared == 0):
        return None
    return cell


# ---- forward passes --------------------------------------------------------------------------------------
def _hidden(forward: ForwardFn, seqs: Sequence[np.ndarray], spec: TokenSpec, batch_size: int) -> list[Any]:
    """Hidden states of each sequence (``[len, H]`` float32 tensors), right-padded forward passes."""
    import torch

    from ._network import pad_batch

    out: list[Any] = [None] * len(seqs)
    order = np.argsort([-len(s) for s in seqs], kind="stable")
    for b in range(0, len(order), batch_size):
        sel = order[b : b + batch_size]
        ids, lengths = pad_batch([seqs[i] for i in sel], spec.pad_id)
        states = forward(ids, lengths)
        states = states.detach().to(device="cpu", dtype=torch.float32)
        for row, i in enumerate(sel):
            out[i] = states[row, : len(seqs[i])]
    return out


@dataclass
class IspValues:
    """Raw results of :func:`compute_isp` (cells in the order they were given).

    ``orig_emb`` holds the pooled embedding of each unperturbed cell, ``pair_orig_emb`` / ``pert_emb`` those of
    the two inputs of each (cell, perturbation) pair (the original may be shortened by the overflow rule).
    """

    cos: np.ndarray
    perturbed: np.ndarray
    expressing: np.ndarray
    gene_cells: list[np.ndarray] = field(default_factory=list)
    gene_tokens: list[np.ndarray] = field(default_factory=list)
    gene_cos: list[np.ndarray] = field(default_factory=list)
    orig_emb: np.ndarray | None = None
    pair_orig_emb: np.ndarray | None = None
    pert_emb: np.ndarray | None = None
    lengths: dict[str, np.ndarray] = field(default_factory=dict)


def _pool(states: Any, n: int, pooling: str, spec: TokenSpec) -> Any:
    if pooling == "cls":
        return states[0]
    if spec.special:
        return states[1 : max(n - 1, 2)].mean(0)
    return states[:n].mean(0)


def compute_isp(
    cells: Sequence[np.ndarray],
    perturbations: Sequence[Sequence[int]],
    *,
    kind: str,
    spec: TokenSpec,
    forward: ForwardFn,
    pooling: str = "mean",
    batch_size: int = 16,
    gene_shifts: bool = False,
    keep_embeddings: bool = False,
    rank_shift: int = 1,
    progress: bool = False,
) -> IspValues:
    """Per-cell cosine similarities between original and perturbed embeddings.

    Parameters
    ----------
    cells
        Model inputs of the cells (token arrays).
    perturbations
        One entry per perturbation: the token ids perturbed together.
    kind
        ``'delete'``, ``'overexpress'``, ``'inhibit'`` or ``'activate'``.
    spec
        Model input facts (:class:`TokenSpec`).
    forward
        Hidden states at the quantified layer of a padded batch (see :data:`ForwardFn`).
    pooling
        ``'mean'``: mean of the per-gene cosine similarities; ``'cls'``: cosine of the ``<cls>`` states.
    batch_size
        Sequences per forward pass (cells are sorted by length to minimise padding; results do not depend on it).
    gene_shifts
        Also return the per-gene cosine similarities (official ``*_and_gene`` modes).
    keep_embeddings
        Also return the pooled original and perturbed cell embeddings (for a goal state).
    rank_shift
        Quartiles to move a gene by (inhibit / activate).
    progress
        Show a progress bar.

    Returns
    -------
    :class:`IspValues` with ``cos`` (float32, cells × perturbations, NaN where not perturbed), ``perturbed`` and
    ``expressing`` masks, and the optional gene-level values and embeddings.
    """
    import torch

    if kind not in KINDS:
        raise ValueError(f"perturbation={kind!r}; use one of {KINDS}.")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}; use 'mean' or 'cls'.")
    if pooling == "cls" and not spec.special:
        raise ValueError("pooling='cls' needs a model whose inputs start with <cls> (Geneformer V2); "
                         "this model (V1) has no <cls> token: use pooling='mean'.")
    n_cells, n_pert = len(cells), len(perturbations)
    bs = max(int(batch_size), 1)
    res = IspValues(
        cos=np.full((n_cells, n_pert), np.nan, dtype=np.float32),
        perturbed=np.zeros((n_cells, n_pert), dtype=bool),
        expressing=np.zeros((n_cells, n_pert), dtype=bool),
    )
    res.lengths = {"orig": np.zeros((n_cells, n_pert), dtype=np.int64),
                   "pert": np.zeros((n_cells, n_pert), dtype=np.int64)}
    g_cells: list[list[np.ndarray]] = [[] for _ in range(n_pert)]
    g_tok: list[list[np.ndarray]] = [[] for _ in range(n_pert)]
    g_cos: list[list[np.ndarray]] = [[] for _ in range(n_pert)]
    orig_emb: np.ndarray | None = None
    pair_emb: np.ndarray | None = None
    pert_emb: np.ndarray | None = None

    order = np.argsort([-len(c) for c in cells], kind="stable")
    batches = [order[b : b + bs] for b in range(0, n_cells, bs)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="in-silico perturbation", unit="batch")
    for sel in batches:
        base = [np.asarray(cells[i], dtype=np.int64) for i in sel]
        base_states = _hidden(forward, base, spec, bs)
        if keep_embeddings:
            h = base_states[0].shape[-1]
            if orig_emb is None:
                orig_emb = np.full((n_cells, h), np.nan, dtype=np.float32)
                pair_emb = np.full((n_cells, n_pert, h), np.nan, dtype=np.float32)
                pert_emb = np.full((n_cells, n_pert, h), np.nan, dtype=np.float32)
            for r, i in enumerate(sel):
                orig_emb[i] = _pool(base_states[r], len(base[r]), pooling, spec).numpy()
        for p, toks in enumerate(perturbations):
            built: list[tuple[int, int, PerturbedCell]] = []
            for r, i in enumerate(sel):
                res.expressing[i, p] = len(find_tokens(base[r], toks)) == len(toks)
                pc = perturb_cell(base[r], toks, kind, spec, rank_shift=rank_shift)
                if pc is not None:
                    built.append((r, i, pc))
            if not built:
                continue
            pert_states = _hidden(forward, [pc.pert for _, _, pc in built], spec, bs)
            cut = [k for k, (r, _, pc) in enumerate(built) if len(pc.orig) != len(base[r])]
            cut_states = _hidden(forward, [built[k][2].orig for k in cut], spec, bs) if cut else []
            cut_map = dict(zip(cut, cut_states, strict=True))
            for k, (r, i, pc) in enumerate(built):
                o_states = cut_map.get(k, base_states[r])
                p_states = pert_states[k]
                m = pc.n_compared
                if m == 0 and pooling != "cls":
                    continue  # no gene left to compare (e.g. all of a V2 cell's genes deleted): NaN
                gene_cos = torch.nn.functional.cosine_similarity(
                    p_states[pc.pert_keep[:m]], o_states[pc.orig_keep[:m]], dim=-1, eps=1e-8
                )
                if pooling == "cls":
                    val = torch.nn.functional.cosine_similarity(p_states[0], o_states[0], dim=-1, eps=1e-8)
                else:
                    val = gene_cos.sum() / float(m)
                res.cos[i, p] = float(val)
                res.perturbed[i, p] = True
                res.lengths["orig"][i, p] = len(pc.orig)
                res.lengths["pert"][i, p] = len(pc.pert)
                if gene_shifts:
                    g_cells[p].append(np.full(m, i, dtype=np.int64))
                    g_tok[p].append(pc.affected)
                    g_cos[p].append(gene_cos.numpy().astype(np.float32))
                if keep_embeddings:
                    pert_emb[i, p] = _pool(p_states, len(pc.pert), pooling, spec).numpy()
                    pair_emb[i, p] = _pool(o_states, len(pc.orig), pooling, spec).numpy()
    if gene_shifts:
        res.gene_cells = [np.concatenate(x) if x else np.zeros(0, np.int64) for x in g_cells]
        res.gene_tokens = [np.concatenate(x) if x else np.zeros(0, np.int64) for x in g_tok]
        res.gene_cos = [np.concatenate(x) if x else np.zeros(0, np.float32) for x in g_cos]
    res.orig_emb, res.pair_orig_emb, res.pert_emb = orig_emb, pair_emb, pert_emb
    return res


def _concat_isp(parts: Sequence[IspValues], n_pert: int, *, gene_shifts: bool) -> IspValues:
    """The :class:`IspValues` of consecutive groups of cells as one (cell indices of gene values shifted)."""
    def cat(arrays: list, empty: np.ndarray) -> np.ndarray:
        return np.concatenate(arrays) if arrays else empty

    out = IspValues(
        cos=cat([p.cos for p in parts], np.zeros((0, n_pert), np.float32)),
        perturbed=cat([p.perturbed for p in parts], np.zeros((0, n_pert), bool)),
        expressing=cat([p.expressing for p in parts], np.zeros((0, n_pert), bool)),
    )
    out.lengths = {k: cat([p.lengths[k] for p in parts], np.zeros((0, n_pert), np.int64)) for k in ("orig", "pert")}
    starts = np.cumsum([0] + [len(p.cos) for p in parts])[:-1]  # first cell of each part
    if gene_shifts:
        out.gene_cells = [cat([p.gene_cells[q] + s for p, s in zip(parts, starts, strict=True)], np.zeros(0, np.int64))
                          for q in range(n_pert)]
        out.gene_tokens = [cat([p.gene_tokens[q] for p in parts], np.zeros(0, np.int64)) for q in range(n_pert)]
        out.gene_cos = [cat([p.gene_cos[q] for p in parts], np.zeros(0, np.float32)) for q in range(n_pert)]
    for name in ("orig_emb", "pair_orig_emb", "pert_emb"):
        arrays = [getattr(p, name) for p in parts if getattr(p, name) is not None]
        setattr(out, name, np.concatenate(arrays) if arrays else None)
    return out


# ---- the adapter's entry point ---------------------------------------------------------------------------
def _looks_ensembl(name: str) -> bool:
    return name.upper().startswith("ENS") and any(ch.isdigit() for ch in name)


def resolve_genes(
    genes: Sequence[str], var_names: Any, plan: Any, dicts: Any
) -> list[tuple[str, str, int]]:
    """Map the genes to perturb to ``(label, Ensembl ID, token)``.

    A gene is looked up, in this order, among ``var_names`` (its token from the gene plan), as an Ensembl ID
    (or, V2, an upper-case symbol) of the model's mapping dictionary, and as a symbol of the model's
    ``gene_name_id_dict``. The label (the result's column name) is the gene symbol when one is known.

    Raises
    ------
    ValueError
        Naming every gene that has no token in the model's vocabulary.
    """
    import pandas as pd

    names = pd.Index([str(v) for v in var_names])
    var_token = plan.var_token
    id_of_token = dicts.id_of_token()
    token_label: dict[int, str] = {}
    names_are_ids = len(names) > 0 and all(_looks_ensembl(n) for n in names[: min(len(names), 50)])
    if not names_are_ids:
        for j in np.flatnonzero(var_token >= 0):
            token_label.setdefault(int(var_token[j]), names[j])
    lookups: dict[str, dict] = {}

    def _lookup(kind: str) -> dict:  # built on first use only (tens of thousands of names)
        if kind not in lookups:
            id_symbol: dict[str, str] = {}
            upper_sym: dict[str, set[str]] = {}
            for sym, eid in dicts.name_id_dict.items():
                id_symbol.setdefault(str(eid), str(sym))
                upper_sym.setdefault(str(sym).upper(), set()).add(str(eid))
            lookups.update(id_symbol=id_symbol, upper_sym=upper_sym)
        return lookups[kind]

    out: list[tuple[str, str, int]] = []
    unknown: list[str] = []
    for g in genes:
        s = str(g).strip()
        tok: int | None = None
        pos = names.get_indexer([s])[0] if s in names else -1
        if pos >= 0 and var_token[pos] >= 0:
            tok = int(var_token[pos])
        if tok is None:
            tok = dicts.token_of(s)
        if tok is None:
            eid = dicts.name_id_dict.get(s)
            if eid is None:
                cands = _lookup("upper_sym").get(s.upper(), set())
                eid = next(iter(cands)) if len(cands) == 1 else None
            tok = dicts.token_of(eid) if eid is not None else None
        key = str(id_of_token[tok]) if tok is not None and tok < len(id_of_token) else None
        if tok is None or key is None or key.startswith("<"):
            unknown.append(s)
            continue
        if _looks_ensembl(s):
            label = token_label.get(tok) or _lookup("id_symbol").get(key) or s
        else:
            label = s
        out.append((label, key, tok))
    if unknown:
        raise ValueError(
            f"Gene(s) {unknown} cannot be perturbed: not in the Geneformer {dicts.version} vocabulary (looked up "
            "in var_names, as Ensembl IDs and as gene symbols of the model's dictionaries). Check the spelling or "
            "pass the Ensembl ID; genes outside the model's vocabulary cannot be perturbed."
        )
    return out


def perturb(
    model: Any,
    data: Any,
    genes: Sequence[str],
    *,
    perturbation: str = "delete",
    combine: bool = False,
    batch_size: int = 16,
    device: Any = None,
    pooling: str | None = None,
    emb_layer: int = -1,
    gene_shifts: bool = False,
    goal_state: tuple[str, Any] | None = None,
    rank_shift: int = 1,
    precision: str = "float32",
    gene_id_key: str | None = "ensembl_id",
    n_counts_key: str | None = "n_counts",
    chunk_size: int | None = None,
    progress: bool = False,
) -> Any:
    """In-silico perturbation with a :class:`~scfm.models.geneformer.GeneformerModel` (see the module docs).

    Parameters
    ----------
    model
        The loaded Geneformer model.
    data
        Read-only :class:`~scfm.models.CellData` (raw counts).
    genes
        Gene symbols or Ensembl IDs.
    perturbation
        ``'delete'``, ``'overexpress'``, ``'inhibit'`` or ``'activate'``.
    combine
        Perturb all ``genes`` together (one column ``'A+B'``); else one perturbation per gene.
    batch_size
        Sequences per forward pass.
    device
        Torch device (default: the model's).
    pooling
        ``'mean'`` (mean of per-gene cosine similarities, official V1 ``emb_mode='cell'``) or ``'cls'``
        (``<cls>`` states, official V2 ``emb_mode='cls'``). Default: ``'cls'`` for V2, ``'mean'`` for V1.
    emb_layer
        ``-1``: second-to-last layer (official default), ``0``: last layer.
    gene_shifts
        Also return, per perturbation, the cosine similarity of every other gene of every perturbed cell
        (official ``*_and_gene`` modes) as a long table (columns ``cell``, ``gene``, ``gene_id``, ``cos_sim``;
        ``groupby('gene').cos_sim.mean()`` gives the official per-gene summary).
    goal_state
        ``(obs column, value)``: also report, per cell, the shift towards the centroid of that group's original
        embeddings (columns ``'<name>_goal_shift'``).
    rank_shift
        Quartiles to move a gene by for ``'inhibit'`` / ``'activate'`` (1, 2 or 3).
    precision
        ``'float32'`` or ``'bfloat16'`` (autocast).
    gene_id_key, n_counts_key, chunk_size
        Tokenizer options (see :meth:`GeneformerModel.tokenize`).
    progress
        Show a progress bar.

    Returns
    -------
    :class:`~scfm.models.PerturbationResult`.
    """
    import pandas as pd
    import torch

    from ..._torch import autocast, check_precision
    from .. import PerturbationResult
    from ._network import layer_to_quant
    from ._tokenizer import iter_tokenized

    dicts = model.dictionaries
    net = model.network
    if perturbation not in KINDS:
        raise ValueError(f"perturbation={perturbation!r}; use one of {KINDS}.")
    special = bool(dicts.special_token)
    pooling = pooling or ("cls" if special else "mean")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}; use 'mean' or 'cls'.")
    if pooling == "cls" and not special:
        raise ValueError("pooling='cls' needs a V2 model (its cells start with <cls>); V1 models have no <cls> "
                         "token: use pooling='mean'.")
    if perturbation in ("inhibit", "activate") and int(rank_shift) not in (1, 2, 3):
        raise ValueError(f"rank_shift={rank_shift!r}; use 1, 2 or 3 (quartiles to move the gene by).")
    precision = check_precision(precision)
    layer = layer_to_quant(net.num_layers, emb_layer)
    bs = int(batch_size)
    if bs < 1:
        raise ValueError("batch_size must be >= 1.")
    gene_list = [str(g) for g in ([genes] if isinstance(genes, str) else genes)]
    if not gene_list:
        raise ValueError("`genes` is empty: name at least one gene to perturb.")
    goal_mask = None
    if goal_state is not None:
        if not (isinstance(goal_state, (tuple, list)) and len(goal_state) == 2):
            raise ValueError("goal_state must be a pair (obs column, value), e.g. ('cell_type', 'B cell').")
        col, val = goal_state
        if col not in data.obs.columns:
            raise KeyError(f"goal_state column {col!r} is not in adata.obs (columns: {list(data.obs.columns)}).")
        goal_mask = np.asarray(data.obs[col] == val, dtype=bool)
        if not goal_mask.any():
            raise ValueError(f"No cell has obs[{col!r}] == {val!r}: the goal state is empty.")

    plan = model.gene_plan(data, gene_id_key=gene_id_key)
    resolved = resolve_genes(gene_list, data.var_names, plan, dicts)
    if combine:
        groups = [resolved]
    else:
        groups = [[r] for r in resolved]
    labels = ["+".join(r[0] for r in grp) for grp in groups]
    tokens = [[r[2] for r in grp] for grp in groups]
    for grp in groups:
        if len({r[2] for r in grp}) != len(grp):
            raise ValueError(f"A gene is given twice in {[r[0] for r in grp]} (as symbol and ID?).")
    if len(set(labels)) != len(labels) or len({tuple(t) for t in tokens}) != len(tokens):
        raise ValueError(f"A gene is given twice in {gene_list} (as symbol and ID?); name each gene once.")

    spec = TokenSpec(max_len=int(net.config.max_position_embeddings), cls_id=dicts.cls_id if special else None,
                     eos_id=dicts.eos_id if special else None, pad_id=dicts.pad_id)
    dev = model._device(device)

    def forward(ids: Any, lengths: Any) -> Any:
        with autocast(dev, precision):
            return net.hidden_states(ids.to(dev), lengths.to(dev), layer=layer)

    # chunk by chunk: only one chunk of tokens is in memory (backed data stream); each cell's values do not
    # depend on the other cells
    parts: list[IspValues] = []
    idx_parts: list[np.ndarray] = []
    valid = np.zeros(data.n_obs, dtype=bool)
    for sl, toks, _ in iter_tokenized(data, plan, dicts, n_counts_key=n_counts_key,
                                      model_input_size=model.model_input_size, chunk_size=chunk_size):
        ok = np.flatnonzero(toks.lengths > 0)
        valid[sl.start + ok] = True
        idx_parts.append(sl.start + ok)
        parts.append(compute_isp(
            [toks.cell(int(i)) for i in ok], tokens, kind=perturbation, spec=spec, forward=forward,
            pooling=pooling, batch_size=bs, gene_shifts=gene_shifts, keep_embeddings=goal_mask is not None,
            rank_shift=int(rank_shift), progress=progress,
        ))
    cell_idx = np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64)
    vals = _concat_isp(parts, len(groups), gene_shifts=gene_shifts)

    n_obs = data.n_obs
    cos = np.full((n_obs, len(groups)), np.nan, dtype=np.float32)
    cos[cell_idx] = vals.cos
    table = pd.DataFrame(cos, index=data.obs_names.copy(), columns=labels)
    expressing = vals.expressing.sum(0)
    perturbed = vals.perturbed.sum(0)
    with np.errstate(all="ignore"):
        mean_cos = np.array([np.nanmean(vals.cos[:, p]) if perturbed[p] else np.nan for p in range(len(groups))])
    summary = pd.DataFrame(
        {
            "perturbation": perturbation,
            "gene_ids": ["+".join(r[1] for r in grp) for grp in groups],
            "n_cells_expressing": expressing.astype(np.int64),
            "n_cells_perturbed": perturbed.astype(np.int64),
            "mean_cos_sim": mean_cos.astype(np.float64),
            "mean_shift": (1.0 - mean_cos).astype(np.float64),
        },
        index=pd.Index(labels, name="perturbation_name"),
    )
    not_expr = [lab for lab, n in zip(labels, perturbed, strict=True) if n == 0]
    if not_expr:
        from ... import logging as logg

        logg.warning(f"{not_expr}: no cell could be perturbed (for {perturbation!r} a cell needs all the genes "
                     "among its model input genes); their columns are all NaN.")

    if goal_mask is not None:
        in_goal = goal_mask[cell_idx]
        if not in_goal.any():
            raise ValueError("No cell of the goal state has a gene of the model's vocabulary: no goal centroid.")
        centroid = torch.from_numpy(np.nanmean(vals.orig_emb[in_goal], axis=0))
        shifts = np.full((n_obs, len(groups)), np.nan, dtype=np.float32)
        for p in range(len(groups)):
            ok = vals.perturbed[:, p]
            if ok.any():
                pe = torch.from_numpy(vals.pert_emb[ok, p])
                oe = torch.from_numpy(vals.pair_orig_emb[ok, p])
                c = centroid[None].expand_as(pe)
                d = (torch.nn.functional.cosine_similarity(pe, c, dim=-1, eps=1e-8)
                     - torch.nn.functional.cosine_similarity(oe, c, dim=-1, eps=1e-8))
                shifts[cell_idx[ok], p] = d.numpy()
        for p, lab in enumerate(labels):
            table[f"{lab}_goal_shift"] = shifts[:, p]
        with np.errstate(all="ignore"):
            summary["mean_goal_shift"] = [float(np.nanmean(shifts[:, p])) if perturbed[p] else np.nan
                                          for p in range(len(groups))]

    gene_tables = None
    if gene_shifts:
        id_of_token = dicts.id_of_token()
        var_token = plan.var_token
        tok_name: dict[int, str] = {}
        for j in np.flatnonzero(var_token >= 0):
            tok_name.setdefault(int(var_token[j]), str(data.var_names[j]))
        obs_names = np.asarray(data.obs_names, dtype=object)
        gene_tables = {}
        for p, lab in enumerate(labels):
            gt = vals.gene_tokens[p]
            uniq, inv = np.unique(gt, return_inverse=True)
            uniq_names = [tok_name.get(int(t), str(id_of_token[t])) for t in uniq]
            if len(set(uniq_names)) == len(uniq_names):
                gene_col = pd.Categorical.from_codes(inv, uniq_names)
            else:
                gene_col = pd.Categorical(np.asarray(uniq_names, dtype=object)[inv])
            gene_tables[lab] = pd.DataFrame(
                {
                    "cell": pd.Categorical(obs_names[cell_idx[vals.gene_cells[p]]]),
                    "gene": gene_col,
                    "gene_id": pd.Categorical.from_codes(inv, [str(id_of_token[t]) for t in uniq]),
                    "cos_sim": vals.gene_cos[p],
                }
            )

    coverage = {**plan.coverage, "n_cells": int(n_obs), "n_cells_tokenized": int(valid.sum())}
    if (~valid).any():
        coverage["n_cells_without_known_gene"] = int((~valid).sum())
    params: dict[str, Any] = {
        "pooling": pooling,
        "emb_layer": int(emb_layer),
        "hidden_state_index": layer,
        "precision": precision,
        "generation": dicts.version,
        "max_position_embeddings": spec.max_len,
        "perturbed_gene_ids": {lab: [r[1] for r in grp] for lab, grp in zip(labels, groups, strict=True)},
        "gene_shifts": bool(gene_shifts),
    }
    if perturbation in ("inhibit", "activate"):
        params["rank_shift"] = int(rank_shift)
    if goal_state is not None:
        params["goal_state"] = [str(goal_state[0]), str(goal_state[1])]
    return PerturbationResult(cells=table, summary=summary, genes=gene_tables, coverage=coverage, params=params)
