"""The robustness corpus: a zoo of small timm architectures (random weights) and hand-built models with
custom-domain ops and unknown shapes, plus the pass configurations every one of them is run through.

Exports are cached under ``$GRAPHOPT_CACHE/corpus/`` (the tests' conftest points that at a persistent folder),
keyed by everything that changes them, so only the first run pays for them (about a minute on 2 cores).
Every architecture is shrunk (depth, width, 64 x 64 inputs) so that running all passes over all of them stays
within a few minutes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh

from graphopt.commands.export import cache_dir
from graphopt.core.files import atomic_write_bytes
from graphs import torch_onnx

__all__ = ["ZooModel", "ZOO", "CORPUS_FORMAT", "export_zoo_model", "custom_models", "pass_configs", "PASS_ARGS",
           "CUSTOM_DOMAIN"]

# Bump when the export procedure below changes, so stale cached exports are not reused.
CORPUS_FORMAT = 1
CUSTOM_DOMAIN = "org.graphopt.test"


@dataclass(frozen=True)
class ZooModel:
    """One architecture of the zoo: a timm model name (or ``builder`` name below) with shrinking arguments."""

    name: str
    timm_name: str
    opset: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    size: int = 64
    batch: str = "dynamic"  # "dynamic": batch axis symbolic; "fixed": batch 1; "dynamic_hw": batch, H, W symbolic
    builder: str | None = None  # built by ``_builder`` (archs timm will not shrink, the project's ShiftViT)

    @property
    def input_shape(self) -> list[int]:
        """The shape the corpus feeds: batch 2 where the batch is dynamic (a batch of one hides bugs)."""
        return [1 if self.batch == "fixed" else 2, 3, self.size, self.size]


def _builder(kind: str) -> Any:
    """Architectures built from their classes: timm's MLP mixers (whose entry points will not shrink) and the
    project's ShiftViT (ScatterND shift chains, what replace_shift_scatter rewrites)."""
    if kind == "shiftvit":
        from graphopt.models.shiftvit import ShiftViT

        return ShiftViT(n_div=12, img_size=64, num_classes=10, embed_dim=24, depths=(1, 1, 1, 1),
                        drop_path_rate=0.0)
    from timm.models import mlp_mixer as mm
    from timm.layers import GatedMlp

    common = dict(num_classes=10, img_size=64, patch_size=16, num_blocks=2, embed_dim=96)
    if kind == "mixer":
        return mm.MlpMixer(**common)
    if kind == "gmlp":
        return mm.MlpMixer(**common, mlp_ratio=6, block_layer=mm.SpatialGatingBlock, mlp_layer=GatedMlp)
    if kind == "resmlp":
        return mm.MlpMixer(**common, mlp_ratio=4, block_layer=mm.ResBlock, norm_layer=mm.Affine)
    raise ValueError(kind)


# CNNs, ViTs, hierarchical transformers, MLP mixers; opsets 11 to 20; dynamic batch, fixed batch, dynamic H and W.
ZOO: tuple[ZooModel, ...] = (
    ZooModel("resnet10t", "resnet10t", 11),
    ZooModel("resnet10t_dynamic_hw", "resnet10t", 13, batch="dynamic_hw"),
    ZooModel("mobilenetv3_small", "mobilenetv3_small_050", 12, batch="fixed"),
    ZooModel("efficientnet_b0", "efficientnet_b0", 13),
    ZooModel("regnetx_002", "regnetx_002", 14, batch="fixed"),
    ZooModel("convnext_atto", "convnext_atto", 17),
    ZooModel("fastvit_t8", "fastvit_t8", 18, batch="fixed"),
    ZooModel("edgenext_xx_small", "edgenext_xx_small", 15),
    ZooModel("mobilevit_xxs", "mobilevit_xxs", 14),
    ZooModel("vit_tiny", "vit_tiny_patch16_224", 18, dict(img_size=64, depth=3)),
    ZooModel("vit_tiny_opset11", "vit_tiny_patch16_224", 11, dict(img_size=64, depth=2), batch="fixed"),
    ZooModel("deit_tiny_distilled", "deit_tiny_distilled_patch16_224", 20, dict(img_size=64, depth=3),
             batch="fixed"),
    ZooModel("cait_xxs", "cait_xxs24_224", 17, dict(img_size=64, depth=2)),
    ZooModel("beit_mini", "beit_base_patch16_224", 16, dict(img_size=64, depth=2, embed_dim=96, num_heads=3)),
    ZooModel("xcit_nano", "xcit_nano_12_p16_224", 19, dict(img_size=64, depth=2), batch="fixed"),
    ZooModel("levit_128s", "levit_128s", 19, dict(img_size=64)),
    ZooModel("swin_mini", "swin_tiny_patch4_window7_224", 16,
             dict(img_size=64, window_size=4, embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))),
    ZooModel("twins_pcpvt_mini", "twins_pcpvt_small", 15, dict(img_size=64, depths=(1, 1, 1, 1)), batch="fixed"),
    ZooModel("twins_svt_mini", "twins_svt_small", 14, dict(img_size=64, depths=(1, 1, 1, 1))),
    ZooModel("pvt_v2_b0", "pvt_v2_b0", 13, batch="fixed"),
    ZooModel("mlp_mixer", "mixer", 16, builder="mixer"),
    ZooModel("gmlp", "gmlp", 12, batch="fixed", builder="gmlp"),
    ZooModel("resmlp", "resmlp", 20, builder="resmlp"),
    ZooModel("shiftvit_mini", "shiftvit", 12, builder="shiftvit"),
    ZooModel("shiftvit_mini_fixed", "shiftvit", 13, batch="fixed", builder="shiftvit"),
)


def _build(spec: ZooModel) -> Any:
    import timm

    if spec.builder is not None:
        return _builder(spec.builder).eval()
    with timm.layers.set_layer_config(exportable=True):
        return timm.create_model(spec.timm_name, pretrained=False, num_classes=10, **spec.kwargs).eval()


def _key(spec: ZooModel) -> str:
    import timm
    import torch

    payload = {"spec": repr(spec), "torch": torch.__version__, "timm": timm.__version__, "onnx": onnx.__version__,
               "format": CORPUS_FORMAT}
    if spec.builder == "shiftvit":  # the project's own model: its source is part of the key
        from graphopt.models import shiftvit

        payload["source"] = hashlib.sha256(Path(shiftvit.__file__).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def export_zoo_model(spec: ZooModel) -> Path:
    """The cached ONNX export of ``spec`` (seed 0 random weights; TorchScript exporter at ``spec.opset``)."""
    path = cache_dir() / "corpus" / f"{spec.name}-{_key(spec)}.onnx"
    if path.is_file():
        return path
    import torch

    torch.manual_seed(0)
    model = _build(spec)
    dummy = torch.randn(1, 3, spec.size, spec.size)
    axes: dict[str, dict[int, str]] | None = None
    if spec.batch == "dynamic":
        axes = {"input": {0: "batch"}, "output": {0: "batch"}}
    elif spec.batch == "dynamic_hw":
        axes = {"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}}
    atomic_write_bytes(path, torch_onnx(model, (dummy,), opset=spec.opset, inputs=("input",), outputs=("output",),
                                        batch=None, dynamic_axes=axes))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Hand-built models: custom domains, unknown shapes


def _model(nodes, inputs, outputs, inits=(), opsets=(("", 17),), value_info=()) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "corpus", inputs, outputs, initializer=list(inits), value_info=list(value_info))
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    return model


def _attention_block(prefix: str, x: str, out: str) -> list[onnx.NodeProto]:
    """x (N, 4, 8, 8) -> MatMul(x, x^T) / 2 -> Softmax(-1) -> MatMul(., x) -> erf GELU -> out."""
    p = prefix
    return [
        oh.make_node("Transpose", [x], [f"{p}xt"], perm=[0, 1, 3, 2]),
        oh.make_node("MatMul", [x, f"{p}xt"], [f"{p}s"]),
        oh.make_node("Div", [f"{p}s", "two"], [f"{p}sd"]),
        oh.make_node("Softmax", [f"{p}sd"], [f"{p}p"], axis=-1),
        oh.make_node("MatMul", [f"{p}p", x], [f"{p}a"]),
        oh.make_node("Div", [f"{p}a", "sqrt2"], [f"{p}g0"]),
        oh.make_node("Erf", [f"{p}g0"], [f"{p}g1"]),
        oh.make_node("Add", [f"{p}g1", "one"], [f"{p}g2"]),
        oh.make_node("Mul", [f"{p}a", f"{p}g2"], [f"{p}g3"]),
        oh.make_node("Mul", [f"{p}g3", "half"], [out]),
    ]


def _scalars() -> list[onnx.TensorProto]:
    return [oh.make_tensor(n, onnx.TensorProto.FLOAT, [], [v])
            for n, v in (("two", 2.0), ("sqrt2", 2 ** 0.5), ("one", 1.0), ("half", 0.5))]


def custom_models() -> dict[str, tuple[onnx.ModelProto, list[int], bool]]:
    """name -> (model, input shape to feed, whether onnxruntime can run it)."""
    f = onnx.TensorProto.FLOAT
    models: dict[str, tuple[onnx.ModelProto, list[int], bool]] = {}

    # A custom-domain op onnxruntime has never heard of, between two attention-like blocks.
    nodes = _attention_block("a_", "input", "h") + [
        oh.make_node("FancyActivation", ["h"], ["h2"], domain=CUSTOM_DOMAIN, alpha=0.5),
    ] + _attention_block("b_", "h2", "output")
    models["custom_domain_op"] = (_model(
        nodes, [oh.make_tensor_value_info("input", f, ["N", 4, 8, 8])],
        [oh.make_tensor_value_info("output", f, ["N", 4, 8, 8])], _scalars(),
        opsets=(("", 17), (CUSTOM_DOMAIN, 1))), [2, 4, 8, 8], False)

    # com.microsoft contrib ops onnxruntime does run (FastGelu, FusedMatMul), mixed with standard ones.
    nodes = [
        oh.make_node("FusedMatMul", ["input", "input"], ["s"], domain="com.microsoft", alpha=0.5, transB=1),
        oh.make_node("Softmax", ["s"], ["p"], axis=-1),
        oh.make_node("MatMul", ["p", "input"], ["a"]),
        oh.make_node("FastGelu", ["a"], ["g"], domain="com.microsoft"),
    ] + _attention_block("c_", "g", "output")
    models["com_microsoft_ops"] = (_model(
        nodes, [oh.make_tensor_value_info("input", f, ["N", 4, 8, 8])],
        [oh.make_tensor_value_info("output", f, ["N", 4, 8, 8])], _scalars(),
        opsets=(("", 17), ("com.microsoft", 1))), [2, 4, 8, 8], True)

    # Unknown shapes: dims with neither a value nor a name, no value_info, a Reshape to a runtime shape.
    nodes = [
        oh.make_node("Shape", ["input"], ["shp"]),
        oh.make_node("Reshape", ["input", "shp"], ["r"]),
    ] + _attention_block("d_", "r", "output")
    models["unknown_shapes"] = (_model(
        nodes, [oh.make_tensor_value_info("input", f, [None] * 4)],
        [oh.make_tensor_value_info("output", f, [None] * 4)], _scalars()), [2, 4, 8, 8], True)

    # Symbolic dims everywhere, rank-3 and rank-5 softmaxes on several axes, a graph output read inside the graph.
    nodes = [
        oh.make_node("Softmax", ["input"], ["s5"], axis=2),
        oh.make_node("Softmax", ["s5"], ["s5b"], axis=-1),
        oh.make_node("Reshape", ["s5b", "shape3"], ["r3"]),
        oh.make_node("Softmax", ["r3"], ["output"], axis=-1),
        oh.make_node("Relu", ["output"], ["extra"]),
    ]
    models["symbolic_dims"] = (_model(
        nodes, [oh.make_tensor_value_info("input", f, ["A", "B", "C", "D", "E"])],
        [oh.make_tensor_value_info("output", f, [None] * 3), oh.make_tensor_value_info("extra", f, [None] * 3)],
        [oh.make_tensor("shape3", onnx.TensorProto.INT64, [3], [0, 0, -1])]), [2, 3, 4, 5, 6], True)

    # Attributes left at their defaults: Transpose without perm (reverses the axes), Softmax without axis.
    nodes = [
        oh.make_node("Transpose", ["input"], ["t"]),
        oh.make_node("Softmax", ["t"], ["s"]),
        oh.make_node("Transpose", ["s"], ["u"]),
        oh.make_node("Softmax", ["u"], ["output"]),
    ]
    models["default_attributes"] = (_model(
        nodes, [oh.make_tensor_value_info("input", f, ["N", 3, 4, 5])],
        [oh.make_tensor_value_info("output", f, ["N", 3, 4, 5])]), [2, 3, 4, 5], True)

    # Two last-axis softmaxes in a row (their inner Transposes cancel), the first one also a graph output.
    nodes = [
        oh.make_node("Softmax", ["input"], ["s1"], axis=-1),
        oh.make_node("Softmax", ["s1"], ["s2"], axis=3),
        oh.make_node("Softmax", ["s2"], ["output"], axis=-1),
    ]
    models["softmax_chain"] = (_model(
        nodes, [oh.make_tensor_value_info("input", f, ["N", 3, 4, 5])],
        [oh.make_tensor_value_info("output", f, ["N", 3, 4, 5]), oh.make_tensor_value_info("s1", f, ["N", 3, 4, 5])]),
        [2, 3, 4, 5], True)

    # float16 throughout, opset 20 (where GELU can be fused into one Gelu node).
    h = onnx.TensorProto.FLOAT16
    scalars16 = [onnx.numpy_helper.from_array(np.array(v, dtype=np.float16), n)
                 for n, v in (("two", 2.0), ("sqrt2", 2 ** 0.5), ("one", 1.0), ("half", 0.5))]
    models["float16_opset20"] = (_model(
        _attention_block("e_", "input", "output"), [oh.make_tensor_value_info("input", h, ["N", 4, 8, 8])],
        [oh.make_tensor_value_info("output", h, ["N", 4, 8, 8])], scalars16, opsets=(("", 20),)),
        [2, 4, 8, 8], True)
    return models


# ---------------------------------------------------------------------------------------------------------------
# Pass configurations

# Representative arguments for passes whose defaults would match nothing (or that require arguments).
PASS_ARGS: dict[str, dict[str, Any]] = {
    "gelu_precision": {"mode": "high_performance", "fuse": True},
    "insert_fusion_breaker": {"path": ["MatMul", "Add"], "op": "Pow"},
    "mixlist": {"keep_fp32": ["LayerNorm", "Softmax"], "allow_fp16": ["Conv"]},
}


def pass_configs(repo: Path) -> dict[str, list[dict[str, Any]]]:
    """label -> pass list (recipe entries): every registered pass alone, but the knowledge library's rewrites
    (``Pass.library``, fold_constants aside) as one list in the order ``graphopt optimize`` runs them (each still
    checked and verified on its own by the pipeline, against the graph before it: one export and reference per
    model instead of one per rewrite), then each recipe's pass list (a recipe whose list equals an earlier one is
    folded into it)."""
    import yaml

    from graphopt.core.pass_infra import all_passes, library_passes, pass_params

    configs: dict[str, list[dict[str, Any]]] = {}
    library = [name for name in library_passes() if name != "fold_constants"]
    for name, cls in all_passes().items():
        args = PASS_ARGS.get(name, {})
        if any(p.default is dataclasses.MISSING and p.name not in args for p in pass_params(cls)):
            continue  # a third-party pass with required arguments the corpus does not know
        if name not in library:
            configs[name] = [{"pass": name, **args}]
    if library:
        configs["library"] = [{"pass": name} for name in library]
    seen = {json.dumps(v, sort_keys=True) for v in configs.values()}
    for path in sorted((repo / "recipes").glob("*.yaml")):
        entries = [e if isinstance(e, dict) else {"pass": e} for e in (yaml.safe_load(path.read_text()).get("passes")
                                                                       or [])]
        key = json.dumps(entries, sort_keys=True)
        if entries and key not in seen:
            seen.add(key)
            configs[f"recipe:{path.stem}"] = entries
    return configs

