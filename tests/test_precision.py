"""fp16 emulation, calibration data, sensitivity search and generated precision configs
(graphopt.ascend.fp16_emulation, graphopt.ascend.calibration, graphopt.ascend.fp16_sensitivity, graphopt precision,
the mixlist pass's measured mode), on small synthetic graphs."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from graphopt.ascend.atc import config_files, keep_dtype_cfg, op_precision_ini, ops_info_json
from graphopt.ascend.calibration import RANDOM_INPUTS_WARNING, load_calibration
from graphopt.ascend.fp16_emulation import Fp16Emulator
from graphopt.ascend.fp16_sensitivity import Target, analyse
from graphopt.ascend.fp16_units import gelu_exact, gelu_tanh, round_fp16
from graphopt.commands.cli import main
from graphopt.passes.mixlist import Mixlist
from graphopt.core.pipeline import run_pipeline
from graphopt.core.tolerance import Tolerance
from graphopt.testing import assert_pass_unchanged, model_from_text

UNCHANGED = Tolerance(max_abs=0.0, cosine=None, top1_agreement=None)

OVERFLOW = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 4] x) => (float[N, 4] y, float[N, 4] z) {
    k = Constant<value = float {1000.0}>()
    [big] y = Mul(x, k)
    [small] z = Relu(x)
}"""


def _rng_x(shape, scale=1.0, offset=0.0, seed=0):
    return (offset + scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def test_overflow_in_fp16_exact_when_kept_fp32():
    emu = Fp16Emulator(model_from_text(OVERFLOW))
    assert sorted(u.kind for u in emu.units) == ["Mul", "Relu"]
    x = np.full((2, 4), 100.0, np.float32)  # 100 * 1000 = 1e5 > 65504, the largest fp16
    fp16 = emu.run([x], emu.assignment("force_fp16"))
    assert np.isinf(fp16["y"]).all()
    assert np.array_equal(fp16["z"], x)
    kept = emu.run([x], emu.assignment("force_fp16", keep_dtype=["big"]))
    assert np.array_equal(kept["y"], x * 1000)
    fp32 = emu.run([x], emu.assignment("must_keep_origin_dtype"))
    assert np.array_equal(fp32["y"], x * 1000)
    # rounding: 1.0001 is not an fp16 value
    y = emu.run([np.full((1, 4), 1.0001, np.float32)], emu.assignment("force_fp16"))["z"]
    assert np.array_equal(y, round_fp16(np.full((1, 4), 1.0001)))


def test_keep_set_honoured_in_every_mode():
    emu = Fp16Emulator(model_from_text(OVERFLOW))

    def fp16(mode, **kw):  # {unit kind: runs in fp16}
        return {u.kind: bool(f) for u, f in zip(emu.units, emu.assignment(mode, **kw))}

    relu = next(u.index for u in emu.units if u.kind == "Relu")
    assert fp16("force_fp16") == {"Mul": True, "Relu": True}
    assert fp16("force_fp16", keep_dtype=["big"]) == {"Mul": False, "Relu": True}
    assert fp16("force_fp16", keep_dtype=["OpType::Mul"]) == {"Mul": False, "Relu": True}
    assert fp16("force_fp16", keep=[relu]) == {"Mul": True, "Relu": False}
    assert fp16("allow_fp32_to_fp16") == {"Mul": False, "Relu": False}  # no cube op: vector ops stay fp32
    # allow_mix_precision: no white op feeds them, so the gray ops follow the fp32 input ...
    assert fp16("allow_mix_precision") == {"Mul": False, "Relu": False}
    # ... unless white-listed; black-list and keep_dtype win
    white = {"white-list": {"to-add": ["Mul", "Relu"]}}
    assert fp16("allow_mix_precision", mixlist=white) == {"Mul": True, "Relu": True}
    black = {**white, "black-list": {"to-add": ["Mul"]}}
    assert fp16("allow_mix_precision", mixlist=black) == {"Mul": False, "Relu": True}
    assert fp16("allow_mix_precision", mixlist=white, keep_dtype=["small"]) == {"Mul": True, "Relu": False}
    with pytest.raises(Exception, match="no node named 'nope'"):
        emu.assignment("force_fp16", keep_dtype=["nope"])
    x = np.full((1, 4), 100.0, np.float32)
    out = emu.run([x], emu.assignment("allow_mix_precision", mixlist=black))
    assert np.array_equal(out["y"], x * 1000) and np.isinf(emu.run([x], emu.assignment("force_fp16"))["y"]).all()


GRAY_FOLLOW = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 4] x) => (float[N, 4] y) {
    w = Constant<value = float[4, 4] {1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1}>()
    a = Relu(x)
    h = MatMul(a, w)
    t = Transpose<perm = [1, 0]>(h)
    u = Transpose<perm = [1, 0]>(t)
    y = Sigmoid(u)
}"""


def test_allow_mix_precision_gray_ops_follow_their_producer():
    emu = Fp16Emulator(model_from_text(GRAY_FOLLOW))
    assert [u.kind for u in emu.units] == ["Relu", "MatMul", "Sigmoid"]
    # Relu reads the fp32 input (stays fp32), MatMul is white, Sigmoid follows it through the Transposes.
    assert emu.assignment("allow_mix_precision").tolist() == [False, True, True]
    assert emu.assignment("allow_mix_precision", mixlist={"black-list": {"to-add": ["BatchMatMulV2"]}}
                          ).tolist() == [False, False, False]
    assert emu.fp16_flop_share(emu.assignment("allow_mix_precision")) == 1.0
    assert emu.units[1].cube_flops == 2 * 4 * 4


LONG_MEAN = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 4096] x) => (float[N, 1] y) {
    y = ReduceMean<axes = [1]>(x)
}"""


def test_long_reducemean_loses_precision_in_fp16_not_in_fp32():
    x = (1e-3 * (1 + np.random.default_rng(0).random((4, 4096)))).astype(np.float32)
    exact = x.astype(np.float64).mean(1, keepdims=True)
    acc16 = Fp16Emulator(model_from_text(LONG_MEAN), reduce_accumulation="fp16")
    acc32 = Fp16Emulator(model_from_text(LONG_MEAN), reduce_accumulation="fp32")
    assert acc16.stats["reductions_fp16_accumulated"] == 1 and acc32.stats["reductions_rounded_only"] == 1
    err = {name: float(np.abs(e.run([x], np.array([on]))["y"] / exact - 1).max())
           for name, e, on in (("fp16_acc", acc16, True), ("fp32_acc", acc32, True), ("kept", acc16, False))}
    # x * fp16(1/4096) is subnormal in fp16; the pairwise partial sums round at every level.
    assert err["fp16_acc"] > 5e-4
    assert err["fp32_acc"] < 2.5e-4  # only the output rounded: half an fp16 ulp
    assert err["kept"] < 1e-6


GELU = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 64] x) => (float[N, 64] y) {
    s = Constant<value = float {1.4142135}>()
    one = Constant<value = float {1.0}>()
    half = Constant<value = float {0.5}>()
    d = Div(x, s)
    e = Erf(d)
    p = Add(e, one)
    m = Mul(x, p)
    y = Mul(m, half)
}"""


def test_gelu_is_one_unit_and_high_performance_is_the_tanh_form():
    emu = Fp16Emulator(model_from_text(GELU))
    assert [(u.kind, u.ascend_type, u.fused) for u in emu.units] == [("Gelu", "Gelu", True)]
    x = _rng_x((2, 64), scale=3.0)
    off = np.zeros(1, bool)
    np.testing.assert_allclose(emu.run([x], off)["y"], gelu_exact(x), atol=1e-6)
    hp = emu.run([x], off, gelu_high_performance=True)["y"]
    np.testing.assert_allclose(hp, gelu_tanh(x), atol=1e-6)
    assert np.abs(hp - gelu_exact(x)).max() > 1e-4  # the approximation is measurably different
    hp16 = emu.run([x], np.ones(1, bool), gelu_high_performance=True)["y"]
    assert np.array_equal(hp16, round_fp16(hp16)) and not np.array_equal(hp16, hp)


def _layernorm_classifier() -> onnx.ModelProto:
    """x -> decomposed LayerNorm (opset 11, as the ViT export) -> MatMul -> 10 logits."""
    w = np.random.default_rng(1).standard_normal((64, 10)).astype(np.float32)
    text = f"""
<ir_version: 7, opset_import: ["" : 11]>
g (float[N, 64] x) => (float[N, 10] y) {{
    two = Constant<value = float {{2.0}}>()
    eps = Constant<value = float {{1e-5}}>()
    gamma = Constant<value = float[64] {{{', '.join(['1.0'] * 64)}}}>()
    w = Constant<value = float[64, 10] {{{', '.join(f'{v:.6f}' for v in w.ravel())}}}>()
    mean = ReduceMean<axes = [-1]>(x)
    d = Sub(x, mean)
    sq = Pow(d, two)
    var = ReduceMean<axes = [-1]>(sq)
    ve = Add(var, eps)
    sd = Sqrt(ve)
    n = Div(d, sd)
    ln = Mul(n, gamma)
    y = MatMul(ln, w)
}}"""
    return model_from_text(text)


def test_search_puts_a_sensitive_layernorm_in_the_black_list():
    emu = Fp16Emulator(_layernorm_classifier())
    assert [u.ascend_type for u in emu.units] == ["LayerNorm", "BatchMatMulV2"]  # CANN's MatMul plugin
    # a large offset with small variations: rounded to fp16 (ulp 0.5 at 1000), the normalised values are noise
    x = _rng_x((16, 64), scale=0.05, offset=1000.0)
    result = analyse(emu, [x], Target(top1=1.0, cosine=0.999))
    assert not result["baselines"]["force_fp16"]["passed"]
    assert result["search"]["keep_types"] == ["LayerNorm"]
    assert result["configs"] == {"mixlist": {"black-list": {"to-add": ["LayerNorm"]}},
                                 "precision_mode": "allow_mix_precision"}
    assert json.loads(ops_info_json(result["configs"]["mixlist"])) == {"black-list": {"to-add": ["LayerNorm"]}}
    assert result["predicted"]["passed"] and result["predicted"]["fp16_flop_share"] == 1.0
    types = {t["type"]: t for t in result["types"]}
    assert types["LayerNorm"]["only_fp16"]["error"] > 100 * types["BatchMatMulV2"]["only_fp16"]["error"]


def _planted_mul_graph(all_muls_sensitive: bool) -> onnx.ModelProto:
    """A classifier whose activations reach ~100: x1000 then x0.001 overflows fp16 in between. With
    ``all_muls_sensitive`` False a third, harmless Mul (x2, exact) shares the op type (which, not being a
    Conv/MatMul, is kept whole all the same)."""
    rng = np.random.default_rng(2)
    w1 = (10 * rng.standard_normal((16, 16))).astype(np.float32)
    w2 = rng.standard_normal((16, 10)).astype(np.float32)
    c = lambda a: ", ".join(f"{v:.6f}" for v in a.ravel())  # noqa: E731
    head = "" if all_muls_sensitive else "    [scale] xs = Mul(x, two)\n"
    src = "x" if all_muls_sensitive else "xs"
    return model_from_text(f"""
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 16] x) => (float[N, 10] y) {{
    two = Constant<value = float {{2.0}}>()
    big = Constant<value = float {{1000.0}}>()
    small = Constant<value = float {{0.001}}>()
    b = Constant<value = float[16] {{{c(np.zeros(16, np.float32) + 0.1)}}}>()
    w1 = Constant<value = float[16, 16] {{{c(w1)}}}>()
    w2 = Constant<value = float[16, 10] {{{c(w2)}}}>()
{head}    h = MatMul({src}, w1)
    hb = Add(h, b)
    r = Relu(hb)
    [up] u = Mul(r, big)
    [down] v = Mul(u, small)
    y = MatMul(v, w2)
}}""")


def test_search_finds_a_planted_sensitive_op_type():
    emu = Fp16Emulator(_planted_mul_graph(all_muls_sensitive=True))
    result = analyse(emu, [_rng_x((16, 16))], Target(top1=1.0, cosine=0.999))
    assert not result["baselines"]["force_fp16"]["passed"]
    assert result["search"]["keep_types"] == ["Mul"] and result["search"]["keep_nodes"] == []
    assert result["configs"]["mixlist"] == {"black-list": {"to-add": ["Mul"]}}
    assert result["predicted"]["passed"]
    assert result["predicted"]["fp16_flop_share"] == 1.0  # both MatMuls stay fp16
    worst = {w["nodes"][0] for w in result["worst_nodes"][:2]}
    assert worst == {"up", "down"}
    # every trial ran once: the cache serves repeats
    assert result["session_runs"] == result["trials"] + result["references"]


def _planted_matmul_graph() -> onnx.ModelProto:
    """Four MatMuls; the middle two scale by ~1e4 and back by ~1e-4, overflowing fp16 in between."""
    rng = np.random.default_rng(3)
    ws = {"w1": rng.standard_normal((16, 16)), "w2": 2500 * rng.standard_normal((16, 16)),
          "w3": 1e-4 * rng.standard_normal((16, 16)), "w4": rng.standard_normal((16, 10))}
    consts = "".join(f"    {k} = Constant<value = float[{w.shape[0]}, {w.shape[1]}] "
                     f"{{{', '.join(f'{v:.6g}' for v in w.ravel())}}}>()\n" for k, w in ws.items())
    return model_from_text(f"""
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 16] x) => (float[N, 10] y) {{
{consts}    [first] a = MatMul(x, w1)
    r = Relu(a)
    [up] u = MatMul(r, w2)
    [down] v = MatMul(u, w3)
    [head] y = MatMul(v, w4)
}}""")


def test_search_narrows_a_kept_matmul_type_to_its_sensitive_nodes():
    emu = Fp16Emulator(_planted_matmul_graph())
    result = analyse(emu, [_rng_x((16, 16))], Target(top1=1.0, cosine=0.999), screen_items=8)
    assert not result["baselines"]["force_fp16"]["passed"]
    assert result["search"]["keep_types"] == []
    assert sorted(result["search"]["keep_nodes"]) == ["down", "up"]
    configs = result["configs"]
    assert configs == {"keep_dtype": result["search"]["keep_nodes"]}  # force_fp16 (ATC's default) + keep_dtype
    assert result["predicted"]["precision_mode"] == "force_fp16" and result["predicted"]["passed"]
    assert 0.0 < result["predicted"]["fp16_flop_share"] < 1.0  # "first" and "head" still run in fp16
    assert result["screen_items"] == 8
    files = config_files(configs)
    assert files == {"keep_dtype.cfg": "".join(f"{n}\n" for n in configs["keep_dtype"])}


def test_config_writers_match_atc_formats():
    assert ops_info_json({"black-list": {"to-add": ["LayerNorm", "MatMul"]}}) == (
        '{\n    "black-list": {\n        "to-add": [\n            "LayerNorm",\n            "BatchMatMulV2"\n'
        '        ]\n    }\n}\n')
    assert op_precision_ini({"Gelu": "high_performance"}) == "[ByOpType]\nGelu=high_performance\n"  # current CANN
    assert keep_dtype_cfg(["up", "OpType::SoftmaxV2"]) == "up\nOpType::SoftmaxV2\n"
    configs = {"mixlist": {"black-list": {"to-add": ["LayerNorm"]}}, "precision_mode": "allow_mix_precision",
               "op_precision": {"Gelu": "high_precision"}, "keep_dtype": ["up"]}
    assert config_files(configs) == {
        "ops_info.json": '{\n    "black-list": {\n        "to-add": [\n            "LayerNorm"\n        ]\n    }\n}\n',
        "op_precision.ini": "[ByOpType]\nGelu=high_precision\n", "keep_dtype.cfg": "up\n"}


def test_mixlist_measured_mode_through_the_pipeline():
    model = _planted_mul_graph(all_muls_sensitive=True)
    inputs = [_rng_x((4, 16), seed=k) for k in range(4)]
    res = run_pipeline(model, [(Mixlist(mode="measured"), "passes[0]", "stop")], inputs=inputs, input_name="x",
                       tolerance=UNCHANGED, real_data=True)
    rec = res.records[0]
    assert rec.status == "unchanged" and not rec.changed
    assert res.configs == {"mixlist": {"black-list": {"to-add": ["Mul"]}}, "precision_mode": "allow_mix_precision"}
    assert rec.stats["keep_types"] == ["Mul"] and rec.stats["predicted"]["passed"]
    assert rec.stats["force_fp16"]["passed"] is False and rec.stats["warnings"] == []
    assert "16 verification input" in rec.stats["calibration"] and "real data" in rec.stats["calibration"]
    # the same inputs when they are the pipeline's seeded random ones (no verify.data): the warning
    res = run_pipeline(model, [(Mixlist(mode="measured"), "passes[0]", "stop")], inputs=inputs, input_name="x",
                       tolerance=UNCHANGED)
    assert res.records[0].stats["warnings"] == [RANDOM_INPUTS_WARNING]
    assert "seeded random" in res.records[0].stats["calibration"]
    # without verification inputs: seeded random ones, with the warning
    res = run_pipeline(model, [(Mixlist(mode="measured", samples=8), "passes[0]", "stop")], inputs=None,
                       input_name="x")
    assert RANDOM_INPUTS_WARNING in res.records[0].stats["warnings"]
    # the pass itself leaves the graph alone
    assert_pass_unchanged(model, Mixlist(mode="measured"))


def test_mixlist_measured_parameters():
    with pytest.raises(ValueError, match="only mode 'static'"):
        Mixlist(mode="measured", keep_fp32=["LayerNorm"])
    with pytest.raises(ValueError, match="target_cosine"):
        Mixlist(mode="measured", target_cosine=1.5)
    with pytest.raises(ValueError, match="set target_top1, target_cosine or both"):
        Mixlist(mode="measured", target_top1=None, target_cosine=None)
    assert Mixlist(mode="measured").calibration is None  # set by the pipeline, not a recipe key


def test_calibration_random_warns_and_npy_loads(tmp_path):
    cal = load_calibration(None, [1, 3, 4, 4], samples=5, batch=2)
    assert cal.warning == RANDOM_INPUTS_WARNING and cal.items == 5 and [len(b) for b in cal.batches] == [2, 2, 1]
    np.save(tmp_path / "x.npy", np.ones((3, 3, 4, 4), np.float32))
    cal = load_calibration(tmp_path / "x.npy", [1, 3, 4, 4], samples=5, batch=8)
    assert cal.warning is None and cal.items == 3
    bins = tmp_path / "bins"  # the layout `graphopt data` writes: one float32 CHW item per .bin, labels.txt
    bins.mkdir()
    for k in range(3):
        np.full((3, 4, 4), k, np.float32).tofile(bins / f"img_{k}.bin")
    (bins / "labels.txt").write_text("img_0.bin 7\nimg_1.bin 8\nimg_2.bin 9\n")
    cal = load_calibration(bins, [1, 3, 4, 4], samples=2, batch=8)
    assert cal.items == 2 and cal.labels == [7, 8] and cal.batches[0][1].max() == 1


def test_cli_writes_report_plot_and_configs(tmp_path, capsys):
    path = tmp_path / "planted.onnx"
    onnx.save(_planted_mul_graph(all_muls_sensitive=True), path)
    code = main(["precision", str(path), "-o", str(tmp_path / "out"), "--samples", "8", "--node-trials", "4"])
    assert code == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [".graphopt", "ops_info.json", "precision.json",
                                                     "precision.md", "sensitivity.png"]
    assert json.loads((out / "ops_info.json").read_text()) == {"black-list": {"to-add": ["Mul"]}}
    report = json.loads((out / "precision.json").read_text())
    assert report["calibration"]["warning"] == RANDOM_INPUTS_WARNING
    assert "| Mul | 2 |" in (out / "precision.md").read_text()
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert "configs:" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# Batch sizes: zero-size inputs and models whose batch dimension is fixed


def _softmax_model(signature: str) -> onnx.ModelProto:
    return model_from_text(f'<ir_version: 8, opset_import: ["" : 17]>\ng ({signature}) {{\n'
                           '    s = Softmax<axis=-1>(x)\n    y = Mul(s, s)\n}')


def test_rebatch_refuses_what_cannot_be_measured_and_keeps_fixed_batches_whole():
    from graphopt.core.errors import UserError
    from graphopt.ascend.calibration import rebatch

    items = np.arange(10, dtype=np.float32).reshape(5, 2)
    assert [b.shape for b in rebatch([items], 2)] == [(2, 2), (2, 2), (1, 2)]
    whole = rebatch([items[:3], items[3:]], 2, fixed=True)  # onnxruntime takes no other size: remainder dropped
    assert [b.shape for b in whole] == [(2, 2), (2, 2)] and np.array_equal(np.concatenate(whole), items[:4])
    with pytest.raises(UserError, match="cannot group items into batches of 0"):
        rebatch([items], 0)
    with pytest.raises(UserError, match="no items to measure on"):
        rebatch([items[:0]], 2)
    with pytest.raises(UserError, match=r"1 item\(s\), fewer than one batch of 2"):
        rebatch([items[:1]], 2, fixed=True)
    # zero-size items are items: their outputs are empty, which measures as exact
    assert [b.shape for b in rebatch([np.zeros((3, 0), np.float32)], 2)] == [(2, 0), (1, 0)]


@pytest.mark.parametrize("signature, outcome", [
    # a fixed batch of 0 takes no items: refused with the input's name (was a raw "range() arg 3 must not be zero")
    ("float[0, 8] x) => (float[0, 8] y", "fixed batch size of 0"),
    # zero-size items: empty outputs, nothing is fp16-sensitive
    ("float[N, 0] x) => (float[N, 0] y", 0),
    # a fixed batch of 2 with zero-size items, and a fixed batch of 2: every trial, the unit-by-unit screen
    # included, runs whole batches of 2 (the screen used to run one batch of 4, which onnxruntime refuses)
    ("float[2, 0, 3] x) => (float[2, 0, 3] y", 0),
    ("float[2, 8] x) => (float[2, 8] y", 0),
])
def test_cli_precision_on_zero_size_and_fixed_batch_inputs(tmp_path, capsys, signature, outcome):
    path = tmp_path / "m.onnx"
    onnx.save(_softmax_model(signature), path)
    code = main(["precision", str(path), "-o", str(tmp_path / "out"), "--samples", "7", "--node-trials", "2"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if isinstance(outcome, str):
        errors = [line for line in captured.err.splitlines() if line.startswith("graphopt: error: ")]
        assert code == 2 and len(errors) == 1 and outcome in errors[0], captured.err
        assert not (tmp_path / "out").exists()
        return
    assert code == outcome, captured.err
    report = json.loads((tmp_path / "out" / "precision.json").read_text())
    assert report["configs"] == {} and report["predicted"]["passed"]
    if "0" in signature:  # empty outputs are exact in any precision
        assert report["baselines"]["force_fp16"]["cosine"] == 1.0
    if "[2," in signature:  # 7 items in whole batches of 2
        assert report["calibration"]["items"] == 6 and "6 used (whole batches of 2)" in report["calibration"]["source"]


def test_mixlist_measured_on_a_fixed_batch_of_zero_is_a_user_error():
    from graphopt.core.errors import UserError

    model = _softmax_model("float[0, 8] x) => (float[0, 8] y")
    with pytest.raises(UserError, match="mixlist \\(mode: measured\\): model input 'x' has a fixed batch size of 0"):
        run_pipeline(model, [(Mixlist(mode="measured", samples=4), "passes[0]", "stop")], inputs=None,
                     input_name="x")


# ---------------------------------------------------------------------------------------------------------------
# Any model's inputs (issue 15): every input fed, integer/bool inputs passed through, fixed batches, fp16 models


def _planted_gated_graph() -> onnx.ModelProto:
    """``_planted_mul_graph`` (x10000 then x0.0001: activations of ~30 overflow fp16 in between) behind a bool gate
    input (Where: no unit), with an integer output (the argmax class, compared exactly): two inputs, one not
    float."""
    rng = np.random.default_rng(2)
    w1 = (10 * rng.standard_normal((16, 16))).astype(np.float32)
    w2 = rng.standard_normal((16, 10)).astype(np.float32)
    c = lambda a: ", ".join(f"{v:.6f}" for v in a.ravel())  # noqa: E731
    return model_from_text(f"""
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 16] x, bool[N, 16] gate) => (float[N, 10] y, int64[N] label) {{
    zero = Constant<value = float {{0.0}}>()
    big = Constant<value = float {{10000.0}}>()
    small = Constant<value = float {{0.0001}}>()
    w1 = Constant<value = float[16, 16] {{{c(w1)}}}>()
    w2 = Constant<value = float[16, 10] {{{c(w2)}}}>()
    xg = Where(gate, x, zero)
    h = MatMul(xg, w1)
    r = Relu(h)
    [up] u = Mul(r, big)
    [down] v = Mul(u, small)
    y = MatMul(v, w2)
    label = ArgMax<axis = 1, keepdims = 0>(y)
}}""")


def _gated_feeds(count: int, n: int = 4) -> list[dict]:
    rng = np.random.default_rng(5)
    return [{"x": rng.standard_normal((n, 16)).astype(np.float32), "gate": rng.integers(0, 2, (n, 16)).astype(bool)}
            for _ in range(count)]


def test_emulator_runs_feeds_with_a_bool_input_and_compares_integer_outputs_exactly():
    emu = Fp16Emulator(_planted_gated_graph())
    feeds = _gated_feeds(2)
    ref = emu.run(feeds)
    assert ref["label"].dtype == np.int64 and [s for s in ref.batch_shapes["y"]] == [(4, 10), (4, 10)]
    from graphopt.core.verify import compare_outputs

    cmp = compare_outputs(ref, emu.run(feeds, emu.assignment("force_fp16")), Target().tolerance())
    label = next(o for o in cmp.outputs if o.name == "label")
    assert label.expected == "integer" and not cmp.passed  # the overflow changes classes: an exact mismatch
    result = analyse(emu, feeds, Target(top1=1.0, cosine=0.999))
    assert result["search"]["keep_types"] == ["Mul"] and result["predicted"]["passed"]


def test_mixlist_measured_calibrates_on_every_input_of_the_feeds():
    model = _planted_gated_graph()
    feeds = _gated_feeds(4)
    res = run_pipeline(model, [(Mixlist(mode="measured"), "passes[0]", "stop")], inputs=feeds, tolerance=UNCHANGED,
                       real_data=True)
    rec = res.records[0]
    assert res.configs == {"mixlist": {"black-list": {"to-add": ["Mul"]}}, "precision_mode": "allow_mix_precision"}
    assert "16 verification input" in rec.stats["calibration"] and rec.stats["warnings"] == []
    # verification off: seeded feeds of every input (the bool gate too)
    res = run_pipeline(model, [(Mixlist(mode="measured", samples=8), "passes[0]", "stop")], inputs=None)
    assert res.configs["mixlist"] == {"black-list": {"to-add": ["Mul"]}}
    assert "8 seeded random input(s)" in res.records[0].stats["calibration"]
    assert Mixlist(mode="measured").calibration is None  # set by the pipeline, not a recipe key


def test_cli_precision_on_a_two_input_model_with_npz_data(tmp_path, capsys):
    path = tmp_path / "gated.onnx"
    onnx.save(_planted_gated_graph(), path)
    feeds = _gated_feeds(1, n=12)[0]
    np.savez(tmp_path / "cal.npz", **feeds)
    code = main(["precision", str(path), "-o", str(tmp_path / "out"), "--data", str(tmp_path / "cal.npz"),
                 "--samples", "10", "--node-trials", "4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = tmp_path / "out"
    assert json.loads((out / "ops_info.json").read_text()) == {"black-list": {"to-add": ["Mul"]}}
    report = json.loads((out / "precision.json").read_text())
    assert report["calibration"]["items"] == 10 and report["calibration"]["warning"] is None
    assert [(i["name"], i["dtype"], i["shape"]) for i in report["model"]["inputs"]] == [
        ("x", "float32", [8, 16]), ("gate", "bool", [8, 16])]  # batches of 8 (and the last of 2)
    assert "gate bool [8, 16]" in (out / "precision.md").read_text()


def _fixed_batch_one(two_inputs: bool) -> onnx.ModelProto:
    """A plain onnx.helper image model with a fixed batch of 1 (x [1, 3, 8, 8]); optionally a second fixed input
    m [1, 4] added to its pooled features."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "wm")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f" if two_inputs else "y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    if two_inputs:
        nodes += [helper.make_node("MatMul", ["m", "wm"], ["mm"]), helper.make_node("Add", ["f", "mm"], ["y"])]
        inputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 4]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              inits if two_inputs else inits[:1])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("two_inputs", [False, True])
def test_cli_precision_on_a_fixed_batch_of_one(tmp_path, capsys, two_inputs):
    path = tmp_path / "m.onnx"
    onnx.save(_fixed_batch_one(two_inputs), path)
    # the CLI's input flags, as graphopt verify takes them; every trial runs batches of 1, the screen included
    code = main(["precision", str(path), "-o", str(tmp_path / "out"), "--samples", "6", "--node-trials", "2",
                 "--input", "x:1,3,8,8:float32", "--range", "x:-1,1"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err, captured.err
    report = json.loads((tmp_path / "out" / "precision.json").read_text())
    assert report["calibration"]["items"] == 6 and report["screen_items"] == 4
    inputs = {i["name"]: i for i in report["model"]["inputs"]}
    assert inputs["x"]["shape"] == [1, 3, 8, 8] and inputs["x"]["range"] == [-1, 1]
    assert sorted(inputs) == (["m", "x"] if two_inputs else ["x"])
    assert report["predicted"]["passed"] and report["units"] == (5 if two_inputs else 3)
    # fewer items than one fixed batch cannot be: a fixed batch of 1 takes any count, so ask for 0 items
    assert main(["precision", str(path), "-o", str(tmp_path / "o2"), "--samples", "0"]) == 2
    assert "--samples 0: must be at least 1" in capsys.readouterr().err


def test_cli_precision_on_an_fp16_model_says_so_in_one_line(tmp_path, capsys):
    path = tmp_path / "fp16.onnx"
    onnx.save(model_from_text('<ir_version: 8, opset_import: ["" : 13]>\ng (float16[N, 2, 4] x) => '
                              '(float16[N, 2, 4] y) {\n    y = Softmax<axis=-1>(x)\n}'), path)
    code = main(["precision", str(path), "-o", str(tmp_path / "out"), "--samples", "4"])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("graphopt: ")]
    assert code == 2 and "Traceback" not in captured.err and len(errors) == 1, captured.err
    assert "the model computes in float16 already (input(s) 'x' float16, no float32 op)" in errors[0]
    assert "run graphopt precision on the fp32 model" in errors[0] and not (tmp_path / "out").exists()


def test_feeds_are_regrouped_only_where_the_model_still_runs():
    """Every input's first dim symbolic, but one is a shape vector, not a batch: joining feeds along it makes a
    Reshape the model refuses, so whole feeds are measured instead (the screen keeps them whole too)."""
    from graphopt.ascend.calibration import batch_layout, fit_feeds

    model = model_from_text('<ir_version: 8, opset_import: ["" : 17]>\n'
                            'g (float[N, 4] x, int64[N] shape) => (float[?, ?] y) {\n'
                            '    r = Reshape(x, shape)\n    y = Relu(r)\n}')
    feeds = [{"x": _rng_x((2, 4), seed=k), "shape": np.array([4, 2], np.int64)} for k in range(3)]
    emu = Fp16Emulator(model)
    layout = batch_layout(model)
    assert layout.regroupable and layout.batched == ("x", "shape")
    batches, note, regrouped = fit_feeds(feeds, layout, 8, 6, emu)
    assert not regrouped and len(batches) == 3 and all(b["shape"].tolist() == [4, 2] for b in batches)
    assert emu.runs == 0  # the failed check is no trial
    result = analyse(emu, batches, Target(top1=None, cosine=0.999), fixed_batch=not regrouped, node_trials=1)
    assert result["predicted"]["passed"] and result["screen_items"] == 4  # two whole feeds of 2
    # a fixed batch larger than the items asked for: one whole batch, said so
    fixed = batch_layout(_softmax_model("float[2, 8] x) => (float[2, 8] y"))
    batches, note, regrouped = fit_feeds([{"x": _rng_x((2, 8))}] * 2, fixed, 8, 1)
    assert len(batches) == 1 and "2 used (one whole batch: the model fixes it to 2)" in note and not regrouped


# ---------------------------------------------------------------------------------------------------------------
# --holdout, report names, image preprocessing


def test_split_holdout_spreads_the_held_out_items_and_refuses_an_empty_side():
    from graphopt.ascend.calibration import Calibration, split_holdout
    from graphopt.core.errors import UserError

    items = np.arange(10, dtype=np.float32).reshape(10, 1)
    cal = Calibration([{"x": items[:8]}, {"x": items[8:]}], list(range(10)), "ten")
    search, held = split_holdout(cal, 0.3, True, 4)
    assert held.items == 3 and search.items == 7
    assert np.concatenate([b["x"] for b in held.batches]).ravel().tolist() == [3, 6, 9]  # spread, not the tail
    assert [feed_items_of(b) for b in search.batches] == [4, 3] and held.labels == [3, 6, 9]
    whole_search, whole_held = split_holdout(cal, 0.5, False, 4)  # a fixed batch: whole feeds
    assert [b["x"].shape[0] for b in whole_held.batches] == [2] and whole_held.labels == [8, 9]
    for fraction, message in ((0.0, r"in \(0, 1\)"), (1.0, r"in \(0, 1\)"), (0.05, "no item to hold out")):
        with pytest.raises(UserError, match=message):
            split_holdout(cal, fraction, True, 4)


def feed_items_of(feed) -> int:
    return len(next(iter(feed.values())))


def test_cli_holdout_reports_the_keep_set_on_held_out_items(tmp_path, capsys):
    path = tmp_path / "planted.onnx"
    onnx.save(_planted_mul_graph(all_muls_sensitive=True), path)
    code = main(["precision", str(path), "-o", str(tmp_path / "out"), "--samples", "8", "--node-trials", "2",
                 "--holdout", "0.25"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((tmp_path / "out" / "precision.json").read_text())
    assert report["calibration"]["items"] == 6 and report["holdout"]["items"] == 2
    assert set(report["holdout"]) == {"items", "fp32", "force_fp16", "keep_set", "predicted"}
    assert report["holdout"]["keep_set"]["passed"] and not report["holdout"]["force_fp16"]["passed"]
    assert "## Held-out items" in (tmp_path / "out" / "precision.md").read_text()
    assert "held out (2 items), keep-set: cosine" in captured.out
    assert main(["precision", str(path), "-o", str(tmp_path / "o2"), "--holdout", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("--holdout 1.5: a fraction of the calibration items in (0, 1), e.g. 0.25")


def test_report_is_named_for_the_run_folder_not_the_file_stem(tmp_path, monkeypatch, capsys):
    run = tmp_path / "runs" / "resnet_a"
    run.mkdir(parents=True)
    onnx.save(_planted_mul_graph(all_muls_sensitive=True), run / "model.onnx")
    monkeypatch.chdir(tmp_path)
    assert main(["precision", "runs/resnet_a/model.onnx", "--samples", "4", "--node-trials", "1"]) == 0
    assert "# fp16 precision: resnet_a" in (tmp_path / "runs" / "resnet_a-precision" / "precision.md").read_text()
    assert not (tmp_path / "runs" / "model-precision").exists()
    onnx.save(_planted_mul_graph(all_muls_sensitive=True), tmp_path / "plain.onnx")
    assert main(["precision", "plain.onnx", "--samples", "4", "--node-trials", "1"]) == 0
    assert (tmp_path / "runs" / "plain-precision" / "precision.md").is_file()


def test_image_folder_with_an_onnx_needs_explicit_preprocessing_and_prints_it(tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        Image.fromarray(np.full((10, 12, 3), 40 * k, np.uint8)).save(images / f"img{k}.png")
    path = tmp_path / "m.onnx"
    onnx.save(_fixed_batch_one(False), path)
    assert main(["precision", str(path), "-o", str(tmp_path / "o1"), "--data", str(images)]) == 2
    assert "a folder of images needs its preprocessing: --recipe RECIPE" in capsys.readouterr().err
    code = main(["precision", str(path), "-o", str(tmp_path / "o2"), "--data", str(images), "--mean", "127",
                 "--std", "128", "--scale", "1", "--node-trials", "1"])
    captured = capsys.readouterr()
    assert code in (0, 1), captured.err
    said = "resize 9 (bilinear), crop 8x8, (pixel * 1 - mean [127.0]) / std [128.0] (from --mean, --scale, --std)"
    assert f"images preprocessed as {said}" in captured.err
    report = json.loads((tmp_path / "o2" / "precision.json").read_text())
    assert report["calibration"]["preprocess"] == said and report["calibration"]["items"] == 3
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: tiny_cnn\nmodel:\n  onnx: {path}\ninput:\n  name: x\n  shape: [1, 3, 8, 8]\n"
                      "preprocess:\n  mean: 127\n  std: 128\n  scale: 1\n")
    code = main(["precision", str(path), "-o", str(tmp_path / "o3"), "--data", str(images), "--recipe", str(recipe),
                 "--interpolation", "bicubic", "--node-trials", "1"])
    captured = capsys.readouterr()
    assert code in (0, 1), captured.err
    assert "(bicubic), crop 8x8, (pixel * 1 - mean [127.0]) / std [128.0] (from recipe tiny_cnn with " \
           "--interpolation)" in captured.err
    assert "# fp16 precision: tiny_cnn" in (tmp_path / "o3" / "precision.md").read_text()
