"""The precision search's staged confirmations (``PrecisionSearch.stage``: a trial on all items runs on the items
``force_fp16`` hurts most first and stops at a conclusive failure; a passing one is the same as one run on all
items) and the sensitivity skipped when ``force_fp16`` meets the target (``analyse(sensitivity_when_met=...)``)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphopt.ascend.fp16_emulation import Fp16Emulator
from graphopt.ascend.fp16_sensitivity import Target, analyse
from graphopt.ascend.precision_keepset import PrecisionSearch
from graphopt.ascend.precision_report import report_markdown

from tests.test_precision import _planted_mul_graph


def _items() -> np.ndarray:
    """16 items: the odd ones small (fp16 is harmless), the even ones large (x1000 overflows fp16)."""
    x = np.random.default_rng(5).standard_normal((16, 16)).astype(np.float32)
    x[1::2] *= 0.001
    return x


def _staged(emu: Fp16Emulator, x: np.ndarray, target: Target) -> tuple[PrecisionSearch, list[PrecisionSearch]]:
    s = PrecisionSearch(emu, [x], target)
    force = emu.assignment("force_fp16")
    s.trial(force)
    order = [int(i) for i in np.argsort(-s.item_errors(force), kind="stable")]
    parts = [sorted(order[:4]), sorted(order[4:8]), sorted(order[8:])]
    stages = [PrecisionSearch(emu, [x[p]], target, ref=s.ref_of(p), item_index=p) for p in parts]
    s.stage(stages)
    return s, stages


def test_a_staged_trial_measures_as_one_run_on_all_items_and_stops_at_a_conclusive_failure():
    emu = Fp16Emulator(_planted_mul_graph(all_muls_sensitive=True))
    x = _items()
    target = Target(top1=1.0, cosine=0.999)
    s, stages = _staged(emu, x, target)
    plain = PrecisionSearch(emu, [x], target)
    assert all(i % 2 == 0 for i in stages[0].item_index)  # the items fp16 hurts most come first

    keep_muls = s.keeping(emu.units_of(["Mul"]))
    runs = emu.runs
    staged, whole = s.trial(keep_muls), plain.trial(keep_muls)
    assert emu.runs - runs == 1 + len(stages)  # the plain run, and one per stage
    assert staged["passed"] and whole["passed"] and staged["items"] == whole["items"] == 16
    assert staged["cosine"] == pytest.approx(whole["cosine"], abs=1e-9)
    assert staged["top1_agreement"] == whole["top1_agreement"]
    np.testing.assert_allclose(s.item_errors(keep_muls), plain.item_errors(keep_muls), atol=1e-9)

    only_first_mul = s.keeping(set(range(s.n)) - {min(emu.units_of(["Mul"]))})
    runs = emu.runs
    failed = s.trial(only_first_mul)
    assert not failed["passed"] and failed["stopped_after_items"] == 4 and failed["items"] == 4
    assert emu.runs - runs == 1  # the first stage only: the others cannot make it pass
    assert not plain.trial(only_first_mul)["passed"]
    assert s.runs == 1  # force_fp16, run before staging: every later trial ran in its stages


def test_a_failed_top1_below_one_is_not_conclusive_so_every_stage_runs():
    emu = Fp16Emulator(_planted_mul_graph(all_muls_sensitive=True))
    x = _items()
    target = Target(top1=0.25, cosine=None)  # the small items' agreement can make up for the large ones'
    s, stages = _staged(emu, x, target)
    force = emu.assignment("force_fp16")
    key = (np.packbits(force).tobytes(), False)
    runs = emu.runs
    first = stages[0].trial(force)
    assert not first["passed"] and not stages[0].conclusive[key]
    assert s.cache.pop(key)  # measured before staging; measure it again, staged
    staged = s.trial(force)
    whole = PrecisionSearch(emu, [x], target).trial(force)
    assert "stopped_after_items" not in staged and staged["items"] == 16
    assert staged["passed"] == whole["passed"] and staged["top1_agreement"] == whole["top1_agreement"]
    assert emu.runs - runs == len(stages) + 2  # three stages (the first once), the plain reference and run


def test_analyse_confirms_on_stages_and_runs_one_reference():
    emu = Fp16Emulator(_planted_mul_graph(all_muls_sensitive=True))
    result = analyse(emu, [_items()], Target(top1=1.0, cosine=0.999), node_trials=0, worst_nodes=0)
    assert result["predicted"]["passed"] and result["search"]["keep_types"] == ["Mul"]
    # one fp32 run on all items, one on the worst item alone (slicing holds: it gives that item's rows); the
    # screens' fp32 outputs are sliced from the first
    assert result["references"] == 2
    assert result["session_runs"] == result["trials"] + result["references"]
    assert not result["sensitivity_skipped"] and result["types"]


def test_sensitivity_is_skipped_when_force_fp16_meets_the_target_unless_asked():
    emu = Fp16Emulator(_planted_mul_graph(all_muls_sensitive=True))
    x = (0.001 * np.random.default_rng(6).standard_normal((8, 16))).astype(np.float32)
    target = Target(top1=1.0, cosine=0.999)
    runs = emu.runs
    result = analyse(emu, [x], target, node_trials=4)
    assert result["baselines"]["force_fp16"]["passed"] and result["search"]["force_fp16_meets_target"]
    assert result["sensitivity_skipped"] and result["types"] == [] and result["worst_nodes"] == []
    assert "Not measured: force_fp16 meets the target" in report_markdown(result)
    skipped_runs = emu.runs - runs
    asked = analyse(emu, [x], target, node_trials=4, sensitivity_when_met=True)
    assert not asked["sensitivity_skipped"] and {t["type"] for t in asked["types"]} == {"BatchMatMulV2", "Add", "Relu",
                                                                                             "Mul"}
    assert len(asked["worst_nodes"]) == 4 and "Not measured" not in report_markdown(asked)
    assert asked["session_runs"] - skipped_runs - runs > skipped_runs


def test_cli_writes_no_sensitivity_plot_when_nothing_is_searched_unless_asked(tmp_path):
    from graphopt.commands.cli import main
    from graphopt.testing import model_from_text

    path = tmp_path / "relu.onnx"
    onnx.save(model_from_text('<ir_version: 8, opset_import: ["" : 17]>\n'
                              'g (float[N, 16] x) => (float[N, 16] y) {\n    y = Relu(x)\n}'), path)
    assert main(["precision", str(path), "-o", str(tmp_path / "a"), "--samples", "8"]) == 0
    assert not (tmp_path / "a" / "sensitivity.png").exists()
    assert "Not measured: force_fp16 meets the target" in (tmp_path / "a" / "precision.md").read_text()
    assert main(["precision", str(path), "-o", str(tmp_path / "b"), "--samples", "8", "--sensitivity"]) == 0
    assert (tmp_path / "b" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert "| Relu | 1 |" in (tmp_path / "b" / "precision.md").read_text()


def test_items_are_sliced_only_when_the_model_computes_each_on_its_own():
    # A weight fed as an input with the batch's symbolic first dim: an item's feed holds a slice of the weight too,
    # so its outputs are no rows of the run over all items (the node corpus' Conv tests at a symbolic batch).
    from graphopt.core.pass_infra import get_pass
    from graphopt.core.pipeline import run_pipeline

    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 5, 5]),
         onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, ["N", 1, 3, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", "N", 3, 3])])
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    emu = Fp16Emulator(model)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((4, 1, 5, 5)).astype(np.float32),
             "w": rng.standard_normal((4, 1, 3, 3)).astype(np.float32)}
    s = PrecisionSearch(emu, [feeds], Target(top1=None, cosine=0.999))
    assert s.per_item_outputs() and not s.separable(0, {k: v[:1] for k, v in feeds.items()})
    p = get_pass("mixlist")(mode="measured", samples=2, node_trials=2)
    result = run_pipeline(model, [(p, "passes[0]", "stop")], inputs=None)  # ran its search, no crash
    assert result.records[0].status == "unchanged"
    # a model that computes each item alone: sliced
    x = _items()
    s = PrecisionSearch(Fp16Emulator(_planted_mul_graph(all_muls_sensitive=True)), [x], Target(top1=1.0, cosine=0.9))
    assert s.separable(3, x[3:4])
