"""Command line: ``scfm demo`` (load data → embed → neighbours/UMAP → figure)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Foundation models the demo tries, best first; the baselines are the fallback.
DEMO_MODELS = ("geneformer-v2-104m", "scgpt-human", "scfoundation-100m", "geneformer-v1-10m")


def _try_foundation_model(names: tuple[str, ...]):
    """The first foundation model whose weights are cached or can be downloaded, with the reasons others failed."""
    import scfm

    reasons: list[str] = []
    listed = set(scfm.models.list().index)
    for name in names:
        if name not in listed:
            reasons.append(f"{name}: not in the registry")
            continue
        if scfm.models.info(name).gated:
            reasons.append(f"{name}: gated (accept the licence on the hub and log in first)")
            continue
        try:
            return scfm.models.load(name), reasons
        except Exception as e:
            reasons.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return None, reasons


def demo(out: str | Path = "scfm_demo", model: str | None = None, baselines_only: bool = False) -> Path:
    """Run the demo and return the path of the saved figure.

    Parameters
    ----------
    out
        Output folder (figure ``scfm_demo.png`` and the annotated ``pbmc200_scfm.h5ad``).
    model
        A registry name to use instead of the automatic choice.
    baselines_only
        Skip foundation models (e.g. on an offline machine without cached weights).
    """
    import matplotlib

    matplotlib.use("agg")
    import scanpy as sc

    import scfm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    adata = scfm.datasets.pbmc200()
    print(f"[scfm demo] data: {adata.n_obs} PBMCs × {adata.n_vars} genes (10x PBMC 10k protein v3 subset)")

    used: list[str] = []
    fm = None
    if model is not None:
        fm = scfm.models.load(model)
    elif not baselines_only:
        fm, reasons = _try_foundation_model(DEMO_MODELS)
        if fm is None:
            print("[scfm demo] no foundation model weights are cached or downloadable here:")
            for r in reasons:
                print(f"    - {r}")
            print("[scfm demo] using the weights-free baselines instead (no foundation model).")
    if fm is not None and getattr(fm, "random_weights", False):
        raise RuntimeError("The demo refuses to present untrained test weights as a model.")
    if fm is not None:
        print(f"[scfm demo] foundation model: {fm.name}")
        key = f"X_{fm.family}"
        scfm.tl.embed(adata, fm, key_added=key)
        used.append(key)
    scfm.tl.embed(adata, "pca")
    used.append("X_pca")
    try:
        import scvi  # noqa: F401

        scfm.tl.embed(adata, "scvi", max_epochs=100)
        used.append("X_scvi")
    except ImportError:
        print("[scfm demo] scvi-tools is not installed: skipping the scVI baseline (pip install 'scfm[scvi]').")

    # Leiden clusters of the first embedding colour every panel.
    sc.pp.neighbors(adata, use_rep=used[0], key_added="demo")
    sc.tl.leiden(adata, neighbors_key="demo", key_added="leiden", flavor="igraph", n_iterations=2, directed=False)
    fig_path = out / "scfm_demo.png"
    scfm.pl.embeddings(adata, keys=used, color="leiden", save=str(fig_path), show=False)
    del adata.uns["demo"], adata.obsp["demo_distances"], adata.obsp["demo_connectivities"]
    adata.write_h5ad(out / "pbmc200_scfm.h5ad")
    print(
        f"[scfm demo] embeddings: {', '.join(used)}; figure: {fig_path}; data: {out / 'pbmc200_scfm.h5ad'} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return fig_path


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scfm`` command."""
    parser = argparse.ArgumentParser(prog="scfm", description="single-cell foundation models for scverse")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="embed 200 PBMCs and save a UMAP figure")
    p.add_argument("--out", default="scfm_demo", help="output folder (default: ./scfm_demo)")
    p.add_argument("--model", default=None, help="registry name of the model to use")
    p.add_argument("--baselines-only", action="store_true", help="use only the weights-free baselines")
    sub.add_parser("models", help="list the registered models")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.out, model=args.model, baselines_only=args.baselines_only)
    elif args.command == "models":
        import pandas as pd

        import scfm

        with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 60):
            print(scfm.models.list()[["family", "version", "modality", "license", "gated", "source"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
