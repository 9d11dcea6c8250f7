"""timm exporters vit_b32, twins_pcpvt_s, bit_m_r50x1: ONNX names, dynamic batch, opset, ORT == PyTorch, and
checkpoints in the upstream key layouts (Meituan-AutoML/Twins, google-research/big_transfer)."""
from __future__ import annotations

import re
import socket

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from graphopt.core.errors import UserError
from graphopt.commands.export import _apply_checkpoint, export_cached, get_exporter, load_checkpoint
from graphopt.models.timm_models import bit_upstream_to_timm_key, convert_bit_checkpoint

SPECS = {
    # name: input, output, opset, (C, H, W), classes, Softmax nodes (one per attention), parameters
    "vit_b32": ("input", "output", 11, (3, 224, 224), 1000, 12, 88_224_232),
    "twins_pcpvt_s": ("input", "output", 11, (3, 224, 224), 1000, 3 + 4 + 6 + 3, 24_106_216),
    "bit_m_r50x1": ("image", "output", 11, (3, 128, 128), 10, 0, 23_520_842),
}


def _build(name: str, seed: int = 0, **args) -> torch.nn.Module:
    torch.manual_seed(seed)  # export_cached builds with seed 0 too
    return get_exporter(name).build(**args)


def _session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    # Pad_Fusion folds BiT's stem Pad(0) into the next MaxPool, whose padding is -inf: not the same maths.
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["Pad_Fusion"])


@pytest.fixture
def no_network(monkeypatch):
    """timm must build from the local definition: any connection attempt (a weights download) fails the test."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("network access while building a model")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("name", list(SPECS))
def test_export_matches_torch(name, no_network):
    input_name, output_name, opset, size, classes, softmaxes, params = SPECS[name]
    exporter = get_exporter(name)
    assert (exporter.input_name, exporter.output_names, exporter.opset) == (input_name, (output_name,), opset)
    assert exporter.size_for({}) == size

    model = _build(name)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == params

    path, _ = export_cached(name)
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    g = m.graph
    assert [i.name for i in g.input] == [input_name]
    assert [o.name for o in g.output] == [output_name]
    for value in (g.input[0], g.output[0]):
        dim0 = value.type.tensor_type.shape.dim[0]
        assert dim0.dim_param and not dim0.HasField("dim_value"), value.name  # dynamic batch
    assert {o.domain: o.version for o in m.opset_import}.get("", None) == opset
    ops = [n.op_type for n in g.node]
    # Attention written out (timm exportable mode), not one fused op: the Softmax is there for the passes.
    assert ops.count("Softmax") == softmaxes

    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = _session(path).run(None, {input_name: x.numpy()})
    assert got.shape == (2, classes)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_bit_stem_is_zero_pad_then_unpadded_maxpool():
    path, _ = export_cached("bit_m_r50x1")
    g = onnx.load(str(path)).graph
    producer = {o: n for n in g.node for o in n.output}
    (pool,) = [n for n in g.node if n.op_type == "MaxPool"]
    pad = producer[pool.input[0]]
    assert pad.op_type == "Pad"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pool.attribute}
    assert attrs["kernel_shape"] == [3, 3] and attrs["strides"] == [2, 2]
    assert not any(attrs.get("pads", []))
    assert producer[pad.input[0]].op_type == "Conv"  # no activation in between: values can be negative


# --- Twins: upstream Meituan-AutoML/Twins ``pcpvt_small_v0`` (gvt.py, class CPVTV2) -------------------------

def _upstream_pcpvt_small_v0_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of upstream pcpvt_small_v0, enumerated from gvt.py's definition.

    CPVTV2 deletes PVT's ``pos_embeds`` and ``cls_token``; ``pos_drops`` have no parameters; q/kv have biases
    (qkv_bias=True); ``attn.sr``/``attn.norm`` exist only where sr_ratio > 1; ``pos_block`` is a depthwise 3x3.
    """
    dims, depths, mlp_ratios, sr_ratios = (64, 128, 320, 512), (3, 4, 6, 3), (8, 8, 4, 4), (8, 4, 2, 1)
    shapes: dict[str, tuple[int, ...]] = {}
    prev = 3
    for i, d in enumerate(dims):
        k = 4 if i == 0 else 2
        shapes |= {f"patch_embeds.{i}.proj.weight": (d, prev, k, k), f"patch_embeds.{i}.proj.bias": (d,),
                   f"patch_embeds.{i}.norm.weight": (d,), f"patch_embeds.{i}.norm.bias": (d,)}
        for j in range(depths[i]):
            p, h = f"blocks.{i}.{j}.", d * mlp_ratios[i]
            shapes |= {p + "norm1.weight": (d,), p + "norm1.bias": (d,),
                       p + "attn.q.weight": (d, d), p + "attn.q.bias": (d,),
                       p + "attn.kv.weight": (2 * d, d), p + "attn.kv.bias": (2 * d,),
                       p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
                       p + "norm2.weight": (d,), p + "norm2.bias": (d,),
                       p + "mlp.fc1.weight": (h, d), p + "mlp.fc1.bias": (h,),
                       p + "mlp.fc2.weight": (d, h), p + "mlp.fc2.bias": (d,)}
            if sr_ratios[i] > 1:
                r = sr_ratios[i]
                shapes |= {p + "attn.sr.weight": (d, d, r, r), p + "attn.sr.bias": (d,),
                           p + "attn.norm.weight": (d,), p + "attn.norm.bias": (d,)}
        shapes |= {f"pos_block.{i}.proj.0.weight": (d, 1, 3, 3), f"pos_block.{i}.proj.0.bias": (d,)}
        prev = d
    shapes |= {"norm.weight": (512,), "norm.bias": (512,), "head.weight": (1000, 512), "head.bias": (1000,)}
    return shapes


def test_twins_has_upstream_key_layout():
    own = {k: tuple(v.shape) for k, v in _build("twins_pcpvt_s").state_dict().items()}
    assert own == _upstream_pcpvt_small_v0_shapes()  # every key, same name, same shape: no remap needed


def test_twins_loads_upstream_checkpoint(tmp_path):
    model = _build("twins_pcpvt_s", seed=0)
    upstream = _upstream_pcpvt_small_v0_shapes()
    sd = model.state_dict()
    state = {k: sd[k] for k in upstream}  # the identity mapping covers every key (asserted above)
    path = tmp_path / "pcpvt_small.pth"
    torch.save({"model": state}, path)  # how upstream main.py wraps weights
    fresh = _build("twins_pcpvt_s", seed=1)
    _apply_checkpoint(fresh, get_exporter("twins_pcpvt_s"), path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


# --- BiT: upstream google-research/big_transfer ``bit_pytorch/models.py`` ------------------------------------

BIT_UNITS = (3, 4, 6, 3)


def _upstream_bit_keys() -> set[str]:
    """Parameter names of upstream ResNetV2 (BiT-M-R50x1), enumerated from bit_pytorch/models.py."""
    keys = {"root.conv.weight", "head.gn.weight", "head.gn.bias", "head.conv.weight", "head.conv.bias"}
    for b, units in enumerate(BIT_UNITS, start=1):
        for u in range(1, units + 1):
            p = f"body.block{b}.unit{u:02d}."
            keys |= {p + f"gn{i}.{s}" for i in (1, 2, 3) for s in ("weight", "bias")}
            keys |= {p + f"conv{i}.weight" for i in (1, 2, 3)}
            if u == 1:  # cin != cout (or stride 2) only in the first unit of each block
                keys.add(p + "downsample.weight")
    return keys


def _timm_to_upstream_bit(key: str) -> str:
    """The inverse mapping, written independently of the exporter's."""
    fixed = {"stem.conv.weight": "root.conv.weight", "norm.weight": "head.gn.weight", "norm.bias": "head.gn.bias",
             "head.fc.weight": "head.conv.weight", "head.fc.bias": "head.conv.bias"}
    if key in fixed:
        return fixed[key]
    m = re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.(norm\d|conv\d|downsample\.conv)\.(weight|bias)", key)
    assert m, key
    layer = {"downsample.conv": "downsample"}.get(m[3], m[3].replace("norm", "gn"))
    return f"body.block{int(m[1]) + 1}.unit{int(m[2]) + 1:02d}.{layer}.{m[4]}"


@pytest.fixture(scope="module")
def bit() -> torch.nn.Module:
    return _build("bit_m_r50x1", seed=0)


def test_bit_key_mapping_covers_every_key(bit):
    timm_keys = list(bit.state_dict())
    upstream = [_timm_to_upstream_bit(k) for k in timm_keys]
    assert set(upstream) == _upstream_bit_keys() and len(set(upstream)) == len(timm_keys)
    assert [bit_upstream_to_timm_key(k) for k in upstream] == timm_keys
    assert bit_upstream_to_timm_key("body.block1.unit01.gn4.weight") is None
    assert bit_upstream_to_timm_key("stem.conv.weight") is None


def _upstream_bit_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """BiT's forward as upstream defines it, on an upstream-layout state dict (eps 1e-10 weight standardisation)."""
    def std_conv(x, w, stride=1, padding=0):
        v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        return F.conv2d(x, (w - m) / torch.sqrt(v + 1e-10), None, stride, padding)

    def gn_relu(x, p):
        return F.relu(F.group_norm(x, 32, sd[p + ".weight"], sd[p + ".bias"]))

    x = std_conv(x, sd["root.conv.weight"], 2, 3)
    x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)
    for b, units in enumerate(BIT_UNITS, start=1):
        for u in range(1, units + 1):
            p = f"body.block{b}.unit{u:02d}."
            stride = 2 if (u == 1 and b > 1) else 1
            out = gn_relu(x, p + "gn1")
            residual = std_conv(out, sd[p + "downsample.weight"], stride) if u == 1 else x
            out = std_conv(out, sd[p + "conv1.weight"])
            out = std_conv(gn_relu(out, p + "gn2"), sd[p + "conv2.weight"], stride, 1)
            out = std_conv(gn_relu(out, p + "gn3"), sd[p + "conv3.weight"])
            x = out + residual
    x = F.adaptive_avg_pool2d(gn_relu(x, "head.gn"), 1)
    return F.conv2d(x, sd["head.conv.weight"], sd["head.conv.bias"])[..., 0, 0]


def test_bit_loads_upstream_checkpoint(bit, tmp_path):
    upstream = {_timm_to_upstream_bit(k): v for k, v in bit.state_dict().items()}
    path = tmp_path / "bit_state_dict.pth"
    # big_transfer's train.py saves {"step", "model": DataParallel state dict ("module." keys), "optim"}.
    optim = torch.optim.SGD(bit.parameters(), lr=0.003, momentum=0.9).state_dict()
    torch.save({"step": 500, "model": {f"module.{k}": v for k, v in upstream.items()}, "optim": optim}, path)
    fresh = _build("bit_m_r50x1", seed=1)
    _apply_checkpoint(fresh, get_exporter("bit_m_r50x1"), path)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = fresh(x)
        assert torch.equal(got, bit(x))
        # Same maths as upstream's own definition (weight standardisation eps 1e-8 in timm vs 1e-10 upstream).
        torch.testing.assert_close(got, _upstream_bit_forward(upstream, x), rtol=0, atol=1e-4)


def test_bit_timm_layout_passes_unchanged_and_mixed_layout_is_refused(bit):
    sd = bit.state_dict()
    assert convert_bit_checkpoint(sd) is sd
    mixed = {_timm_to_upstream_bit(k): v for k, v in sd.items()}
    mixed["stem.conv.weight"] = mixed.pop("root.conv.weight")
    with pytest.raises(UserError, match=r"stem\.conv\.weight"):
        convert_bit_checkpoint(mixed)


def test_pickled_module_checkpoint_is_refused(tmp_path):
    # The seed's bit.pth is a whole pickled DataParallel model: unpickling it would run arbitrary code.
    path = tmp_path / "bit.pth"
    torch.save(torch.nn.DataParallel(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))), path)
    with pytest.raises(UserError, match="state_dict"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="state_dict"):
        export_cached("bit_m_r50x1", checkpoint=path)
