"""LV-ViT-S exporter: size, upstream key layout, checkpoint round trip, ONNX export vs PyTorch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graphopt.commands.export import export_to_bytes, get_exporter, load_checkpoint

SIZE = (3, 224, 224)


def _build(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get_exporter("lvvit_s").build()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return _build(0)


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    exporter = get_exporter("lvvit_s")
    return export_to_bytes(exporter, {}, None, 13, SIZE)  # seed 0, as the `model` fixture


def test_size_and_output_shape(model):
    n = sum(p.numel() for p in model.parameters())
    assert 25_500_000 <= n <= 27_000_000, n
    assert not model.training
    with torch.no_grad():
        out = model(torch.randn(1, *SIZE))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


def test_upstream_key_layout(model):
    keys = set(model.state_dict())
    expected = {
        "cls_token", "pos_embed", "norm.weight", "norm.bias",
        "head.weight", "head.bias", "aux_head.weight", "aux_head.bias",
        "patch_embed.conv1.weight", "patch_embed.conv2.weight", "patch_embed.conv3.weight",
        "patch_embed.proj.weight", "patch_embed.proj.bias",
    }
    for i in (1, 2, 3):
        expected |= {f"patch_embed.bn{i}.{s}" for s in
                     ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    for b in range(16):
        p = f"blocks.{b}."
        expected |= {p + s for s in (
            "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias",
            "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")}
    assert keys == expected
    sd = model.state_dict()
    assert tuple(sd["pos_embed"].shape) == (1, 197, 384)
    assert tuple(sd["blocks.0.attn.qkv.weight"].shape) == (1152, 384)
    assert tuple(sd["blocks.0.mlp.fc1.weight"].shape) == (1152, 384)
    assert tuple(sd["patch_embed.proj.weight"].shape) == (384, 64, 8, 8)


def test_checkpoint_round_trip(model, tmp_path):
    path = tmp_path / "lvvit_s.pth"
    # The usual training-script wrapping: {"state_dict": {"module.<key>": tensor}}.
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    fresh = _build(1)
    x = torch.randn(1, *SIZE)
    with torch.no_grad():
        want = model(x)
        assert not torch.equal(fresh(x), want)
        fresh.load_state_dict(load_checkpoint(path), strict=True)
        assert torch.equal(fresh(x), want)


def test_onnx_export_matches_torch(model, onnx_bytes):
    import onnx
    import onnxruntime as ort

    m = onnx.load_from_string(onnx_bytes)
    assert [i.name for i in m.graph.input] == ["image"]
    assert [o.name for o in m.graph.output] == ["features"]
    for value in (m.graph.input[0], m.graph.output[0]):
        dim0 = value.type.tensor_type.shape.dim[0]
        assert dim0.dim_param and not dim0.HasField("dim_value"), value.name  # dynamic batch
    assert sum(n.op_type == "Softmax" for n in m.graph.node) == 16

    x = torch.randn(2, *SIZE, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        want = model(x).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"image": x.numpy()})
    assert got.shape == (2, 1000)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

