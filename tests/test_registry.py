"""The model registry: real releases with sources and licences, info, close-name suggestions, not-yet adapters."""

from __future__ import annotations

import pytest

import scfm
from scfm.models.releases import AdapterNotAvailableError


def test_list_has_real_releases_with_source_and_licence() -> None:
    df = scfm.models.list()
    assert df.index.name == "name"
    cols = {"family", "modality", "version", "parameters", "embedding_dim", "gene_id_scheme", "species"}
    assert cols | {"input_length", "license", "source", "gated"} <= set(df.columns)
    real = df[~df.index.isin(["pca", "scvi"])]  # the weights-free baselines are not releases
    assert len(real) >= 15
    for name, row in real.iterrows():
        assert isinstance(row["source"], str) and row["source"].startswith("http"), name
        assert isinstance(row["license"], str) and row["license"] and row["license"] != "unknown", name
    assert real.loc[["uni", "uni2-h", "conch", "virchow2", "prov-gigapath"], "gated"].all()
    assert not real.loc[["plip", "uce-4l", "uce-33l"], "gated"].any()
    assert set(scfm.models.list(modality="image").index) >= {
        "uni",
        "uni2-h",
        "conch",
        "virchow2",
        "prov-gigapath",
        "plip",
    }
    assert set(scfm.models.list(family="uce").index) == {"uce-4l", "uce-33l"}


def test_every_release_has_downloadable_or_documented_files() -> None:
    for name in scfm.models.list().index:
        e = scfm.models.info(name)
        if e.weights_free:
            continue
        assert e.citation, name
        for f in (*e.checkpoint, *e.resources):
            # a download source, or (files without a direct link, e.g. GeneCompass checkpoints) a mirror path
            assert f.hf_repo or f.url or f.mirror_path, (name, f.filename)
            if f.sha256 is not None:
                assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0, (name, f.filename)


def test_info_of_uce_and_pathology_encoders() -> None:
    uce = scfm.models.info("uce-33l")
    assert uce.family == "uce" and uce.embedding_dim == 1280 and "mouse" in uce.species
    assert uce.checkpoint[0].url == "https://figshare.com/ndownloader/files/43423236"
    assert {f.filename for f in uce.resources} >= {
        "all_tokens.torch",
        "species_offsets.pkl",
        "protein_embeddings.tar.gz",
    }
    uni = scfm.models.info("uni")
    assert uni.modality == "image" and uni.gated and uni.checkpoint[0].hf_repo == "MahmoodLab/UNI"
    assert "Nature Medicine" in uni.citation
    gc = scfm.models.info("genecompass-base")
    # sha256 and size come from the repository's Git LFS pointers
    pk = {f.filename: f for f in gc.resources}["prior_knowledge/human_mouse_tokens.pickle"]
    assert pk.sha256 == "b86750520401bee48e777e65d68f4fd1ba1eade3cd5f7b391bb90d014e72e525" and pk.size == 1144041


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(KeyError) as e:
        scfm.models.load("uni3")
    assert "'uni'" in str(e.value) and "scfm.models.list()" in str(e.value)
    with pytest.raises(KeyError, match="uce-4l"):
        scfm.models.info("uce-4")


@pytest.mark.parametrize("name", ["uni", "uni2-h", "conch", "virchow2", "prov-gigapath", "plip"])
def test_pathology_encoders_say_adapter_arrives_with_histology(name: str) -> None:
    # raised before anything is fetched: the test session is offline with an empty cache
    with pytest.raises(NotImplementedError, match="histology") as e:
        scfm.models.load(name)
    assert isinstance(e.value, AdapterNotAvailableError)
    assert f"scfm.models.info({name!r})" in str(e.value) and f"scfm.models.download({name!r})" in str(e.value)


def test_cross_species_models_not_yet_available() -> None:
    for name in ("uce-4l", "genecompass-small"):
        with pytest.raises(AdapterNotAvailableError, match="cross-species"):
            scfm.models.load(name)


def test_download_of_a_not_yet_runnable_model_works_offline_with_a_clear_error() -> None:
    with pytest.raises(scfm._io.download.OfflineError, match="MahmoodLab/UNI"):
        scfm.models.download("uni")
