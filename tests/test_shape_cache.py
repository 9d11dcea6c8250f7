"""infer_shapes caches its results by a hash of the model (and the inference code and versions): a repeated
inference reads the cache; a damaged, unwritable or disabled cache never changes the result."""
from __future__ import annotations

import pytest

from graphopt.core import shapes
from graphopt.testing import model_from_text

MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 8] x) => (float[N, 8] y) {
    a = Transpose<perm = [1, 0]>(x)
    b = Relu(a)
    y = Transpose<perm = [1, 0]>(b)
}"""


def _shapes(model) -> dict[str, list]:
    return {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GRAPHOPT_SHAPE_CACHE", raising=False)
    return tmp_path / "cache" / "shapes"


def test_a_repeated_inference_reads_the_cache(cache, monkeypatch):
    model = model_from_text(MODEL)
    first = shapes.infer_shapes(model)
    assert _shapes(first)["a"] == _shapes(first)["b"] == [8, "N"]
    assert len(list(cache.iterdir())) == 1

    def fail(_):
        raise AssertionError("inferred again instead of reading the cache")

    monkeypatch.setattr(shapes, "_infer_uncached", fail)
    assert shapes.infer_shapes(model) == first
    other = model_from_text(MODEL.replace("Relu", "Sigmoid"))
    with pytest.raises(AssertionError, match="inferred again"):  # another model: another key
        shapes.infer_shapes(other)


def test_damaged_entry_is_inferred_again_and_replaced(cache):
    model = model_from_text(MODEL)
    first = shapes.infer_shapes(model)
    (entry,) = cache.iterdir()
    entry.write_bytes(b"not a model")
    assert shapes.infer_shapes(model) == first
    assert entry.read_bytes() == first.SerializeToString()


def test_disabled_or_unwritable_cache_changes_nothing(cache, monkeypatch, tmp_path):
    model = model_from_text(MODEL)
    monkeypatch.setenv("GRAPHOPT_SHAPE_CACHE", "0")
    expected = shapes.infer_shapes(model)
    assert not cache.exists()
    monkeypatch.delenv("GRAPHOPT_SHAPE_CACHE")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("GRAPHOPT_CACHE", str(blocker))
    assert shapes.infer_shapes(model) == expected


def test_least_recently_used_entries_go_first(cache, monkeypatch):
    import os

    monkeypatch.setattr(shapes, "_SHAPE_CACHE_ENTRIES", 2)
    models = [model_from_text(MODEL.replace("Relu", op)) for op in ("Relu", "Sigmoid", "Tanh")]
    for m in models[:2]:
        shapes.infer_shapes(m)
        for entry in cache.iterdir():  # distinct ages without sleeping
            os.utime(entry, (entry.stat().st_atime, entry.stat().st_mtime - 10))
    shapes.infer_shapes(models[0])  # a hit: the first entry is the most recently used again
    shapes.infer_shapes(models[2])
    assert len(list(cache.iterdir())) == 2

    def fail(_):
        raise AssertionError("evicted")

    monkeypatch.setattr(shapes, "_infer_uncached", fail)
    shapes.infer_shapes(models[0])
    shapes.infer_shapes(models[2])
    with pytest.raises(AssertionError, match="evicted"):
        shapes.infer_shapes(models[1])
