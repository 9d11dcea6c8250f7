"""ShiftViT Shift-T/light: upstream key layout, the upstream in-place shift, and its ONNX export (ScatterND)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from graphopt.commands.export import export_to_bytes, get_exporter, load_checkpoint
from graphopt.models.shiftvit import ShiftModule, build_shiftvit_t_light, shift_feat
from graphs import torch_onnx

# 12 blocks x 5 slice assignments (left, right, up, down, rest) in the upstream shift.
SCATTERS_PER_SHIFT = 5
N_BLOCKS = 2 + 2 + 6 + 2


def _ort_run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _reference_shift(x: torch.Tensor, n_div: int) -> torch.Tensor:
    """Independent definition: roll by one pixel, then zero the row/column that wrapped around."""
    g = x.shape[1] // n_div
    out = x.clone()
    left = torch.roll(x[:, 0:g], shifts=-1, dims=3)
    left[..., -1] = 0
    right = torch.roll(x[:, g:2 * g], shifts=1, dims=3)
    right[..., 0] = 0
    up = F.pad(x[:, 2 * g:3 * g, 1:, :], (0, 0, 0, 1))
    down = F.pad(x[:, 3 * g:4 * g, :-1, :], (0, 0, 1, 0))
    out[:, 0:4 * g] = torch.cat([left, right, up, down], dim=1)
    return out


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_shiftvit_t_light()


@pytest.fixture(scope="module")
def exported() -> bytes:
    return export_to_bytes(get_exporter("shiftvit_t_light"), {}, None, 12, (3, 224, 224))


def test_param_count_and_output_shape(model):
    # Upstream shiftvit_light_tiny has 19,608,328 parameters (README: "Shift-T / light ... 20M").
    assert sum(p.numel() for p in model.parameters()) == 19_608_328
    assert not model.training
    with torch.no_grad():
        y = model(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 1000)
    assert torch.isfinite(y).all()


def test_upstream_key_layout(model):
    keys = set(model.state_dict())
    for k in ("patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight",
              "layers.0.blocks.0.norm2.weight", "layers.0.blocks.0.mlp.fc1.weight", "layers.0.blocks.0.mlp.fc2.bias",
              "layers.2.blocks.5.mlp.fc2.weight", "layers.2.downsample.reduction.weight",
              "layers.2.downsample.norm.bias", "norm.weight", "norm.bias", "head.weight", "head.bias"):
        assert k in keys, k
    assert "layers.3.downsample.norm.weight" not in keys  # last stage has no patch merging
    assert "layers.0.downsample.reduction.bias" not in keys  # the reduction conv has no bias
    assert not any(".norm1." in k for k in keys)  # blocks only have norm2 (the shift has no params)
    assert len(keys) == 89
    assert model.state_dict()["layers.2.downsample.reduction.weight"].shape == (768, 384, 2, 2)
    assert model.state_dict()["head.weight"].shape == (1000, 768)


def test_state_dict_round_trip(model, tmp_path):
    path = tmp_path / "shiftvit_tiny_light.pth"
    torch.save({"model": model.state_dict(), "epoch": 299}, path)  # upstream checkpoints wrap under "model"
    state = load_checkpoint(path)
    torch.manual_seed(123)
    other = build_shiftvit_t_light()
    other.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


@pytest.mark.parametrize("n_div", [8, 12, 16])
@pytest.mark.parametrize("channels", [48, 50])
def test_shift_feat_matches_reference(n_div, channels):
    torch.manual_seed(n_div + channels)
    x = torch.randn(2, channels, 5, 7)
    expected = _reference_shift(x, n_div)
    assert torch.equal(shift_feat(x, n_div), expected)
    assert torch.equal(ShiftModule(n_div)(x), expected)


def test_shift_feat_directions():
    x = torch.arange(4 * 3 * 3, dtype=torch.float32).reshape(1, 4, 3, 3)
    y = shift_feat(x, 4)  # g = 1: channel 0 left, 1 right, 2 up, 3 down
    assert y[0, 0].tolist() == [[1, 2, 0], [4, 5, 0], [7, 8, 0]]
    assert y[0, 1].tolist() == [[0, 9, 10], [0, 12, 13], [0, 15, 16]]
    assert y[0, 2].tolist() == [[21, 22, 23], [24, 25, 26], [0, 0, 0]]
    assert y[0, 3].tolist() == [[0, 0, 0], [27, 28, 29], [30, 31, 32]]


@pytest.mark.parametrize("n_div", [8, 12, 16])
def test_shift_module_exports_scatternd(n_div):
    data = torch_onnx(ShiftModule(n_div), (torch.randn(1, 48, 6, 6),), opset=12, batch="b")
    ops = [n.op_type for n in onnx.load_from_string(data).graph.node]
    assert ops.count("ScatterND") == SCATTERS_PER_SHIFT
    x = torch.randn(2, 48, 6, 6)
    np.testing.assert_array_equal(_ort_run(data, x.numpy()), shift_feat(x, n_div).numpy())


def test_export(exported):
    m = onnx.load_from_string(exported)
    onnx.checker.check_model(m)
    g = m.graph
    assert [i.name for i in g.input] == ["input"]
    assert [o.name for o in g.output] == ["output"]
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param
    assert g.output[0].type.tensor_type.shape.dim[0].dim_param
    assert {o.domain: o.version for o in m.opset_import}.get("", None) == 12
    ops = [n.op_type for n in g.node]
    assert ops.count("ScatterND") == SCATTERS_PER_SHIFT * N_BLOCKS

    # Tail as upstream's: final GroupNorm affine (Mul -> Add) -> GlobalAveragePool -> Flatten -> Gemm.
    producer = {o: n for n in g.node for o in n.output}
    path, name = [], g.output[0].name
    for _ in range(5):
        node = producer[name]
        path.append(node.op_type)
        name = node.input[0]
    assert path[::-1] == ["Mul", "Add", "GlobalAveragePool", "Flatten", "Gemm"]

    torch.manual_seed(0)  # export_to_bytes builds with seed 0
    ref_model = build_shiftvit_t_light()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = ref_model(x).numpy()
    out = _ort_run(exported, x.numpy())
    assert out.shape == (2, 1000)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
