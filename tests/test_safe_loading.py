"""No file scfm loads can execute code: restricted unpickler, weights-only torch.load, safetensors."""

from __future__ import annotations

import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch

from scfm._io.safe import UnsafePickleError, load_pickle, load_state_dict, loads_pickle, torch_load


class _Payload:
    """Unpickling this object runs ``os.system('touch <marker>')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Arbitrary:
    """A harmless but arbitrary class: still not a plain container."""

    def __init__(self) -> None:
        self.x = 1


def _calls_system(data: bytes) -> bool:
    """Whether the pickle really carries the payload: it imports ``system`` and calls it (without running it)."""
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    names = {str(arg) for _, arg in ops if arg is not None}
    return any("system" in n for n in names) and any(name == "REDUCE" for name, _ in ops)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_reduce_payload_is_rejected_and_never_runs(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps({"token": 1, "evil": _Payload(marker)}, protocol=protocol)
    assert _calls_system(data)
    path = tmp_path / "token_dictionary.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError, match="system"):
        load_pickle(path)
    with pytest.raises(UnsafePickleError):
        loads_pickle(data)
    assert not marker.exists()


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps(_Arbitrary()),
        pickle.dumps(np.arange(3)),
        b"cbuiltins\neval\n(V1+1\ntR.",  # a hand-written call of builtins.eval
    ],
    ids=["class", "ndarray", "builtins-eval"],
)
def test_other_globals_are_rejected(data: bytes) -> None:
    with pytest.raises(UnsafePickleError, match="Refusing to load"):
        loads_pickle(data)


def test_plain_containers_and_numpy_scalars_load() -> None:
    obj = {"a": [1, 2.5, "x", None, True], "b": (1, 2), "c": {3}, "d": np.float32(1.5), "e": np.int64(7)}
    back = loads_pickle(pickle.dumps(obj))
    assert back == obj
    assert back["d"].dtype == np.float32


def test_real_geneformer_dictionaries_load(shared: Path) -> None:
    root = shared / "resources" / "geneformer"
    pickles = sorted(root.glob("v*/*.pkl"))
    assert len(pickles) == 8
    loaded = {p.relative_to(root).as_posix(): load_pickle(p) for p in pickles}
    for name, d in loaded.items():
        assert isinstance(d, dict) and len(d) > 1000, name
    assert len(loaded["v1/token_dictionary_gc30M.pkl"]) == 25_426
    assert len(loaded["v2/token_dictionary_gc95M.pkl"]) == 20_275
    medians = loaded["v2/gene_median_dictionary_gc95M.pkl"]
    key = next(iter(medians))
    assert key.startswith("ENSG") and float(medians[key]) > 0


def test_torch_load_rejects_arbitrary_objects(tmp_path: Path) -> None:
    marker = tmp_path / "pwned_by_checkpoint"
    ok = {"layer.weight": torch.randn(3, 2), "layer.bias": torch.zeros(3)}
    for i, bad in enumerate(({**ok, "extra": _Arbitrary()}, {**ok, "evil": _Payload(marker)})):
        path = tmp_path / f"model_{i}.pt"
        torch.save(bad, path)
        with pytest.raises(UnsafePickleError, match="could run code"):
            torch_load(path)
        with pytest.raises(UnsafePickleError):
            load_state_dict(path)
    assert not marker.exists()
    good = tmp_path / "good.pt"
    torch.save(ok, good)
    back = load_state_dict(good)
    assert torch.equal(back["layer.weight"], ok["layer.weight"])


def test_torch_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(2), path)
    with pytest.raises(TypeError, match="state dict"):
        load_state_dict(path)


def test_safetensors_loads(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = {"encoder.weight": torch.randn(4, 3), "encoder.bias": torch.arange(4, dtype=torch.float32)}
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    back = load_state_dict(path)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert torch.equal(back[k], v)
