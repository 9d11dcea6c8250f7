"""``replace_shift_scatter``: ShiftViT's ScatterND shift chains become Slice + Pad + Concat, bit-exact.

Positive graphs are real TorchScript exports (opset 12, dynamic batch) of ``ShiftModule`` between two convs, for
several ``n_div`` and channel counts; negative graphs are exports of "almost a shift" modules and hand-written
ScatterNDs that the pass must leave exactly as they are; and the whole Shift-T/light model loses all 60 ScatterNDs.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from graphopt.core.ir import op_counts
from graphopt.models.shiftvit import ShiftModule
from graphopt.passes._scatter_chain import ShiftGroup, decompose_shift_map, simulate_scatter_chain
from graphopt.passes.replace_shift_scatter import ReplaceShiftScatter
from graphopt.core.pattern import NoMatch
from graphopt.core.tolerance import Tolerance
from graphopt.testing import (assert_pass_unchanged, assert_pass_verified, compare_models, model_from_text,
                              run_pass)
from graphs import torch_onnx

# The rewrite copies elements: anything but bit-exact equality is a bug.
EXACT = Tolerance(max_abs=0.0, max_rel=None, cosine=None, top1_agreement=None)
SCATTERS_PER_SHIFT = 5


def export(module: nn.Module, shape: tuple[int, ...], n_inputs: int = 1) -> onnx.ModelProto:
    """TorchScript export as the ShiftViT exporter does it: opset 12, dynamic batch on every input and the output."""
    names = [f"x{i}" if n_inputs > 1 else "x" for i in range(n_inputs)]
    args = tuple(torch.randn(*shape) for _ in range(n_inputs))
    return onnx.load_from_string(torch_onnx(module.eval(), args, opset=12, inputs=names, batch="batch"))


class ConvShiftConv(nn.Module):
    """The shift mid-graph, as in a ShiftViT block: conv -> shift -> conv."""

    def __init__(self, channels: int, n_div: int) -> None:
        super().__init__()
        torch.manual_seed(channels * 100 + n_div)
        self.pre = nn.Conv2d(3, channels, 3, padding=1)
        self.shift = ShiftModule(n_div)
        self.post = nn.Conv2d(channels, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.shift(self.pre(x)))


def expected_groups(channels: int, n_div: int) -> list[dict]:
    g = channels // n_div
    return [
        {"channels": [0, g], "axis": 3, "direction": "left", "amount": 1},
        {"channels": [g, 2 * g], "axis": 3, "direction": "right", "amount": 1},
        {"channels": [2 * g, 3 * g], "axis": 2, "direction": "up", "amount": 1},
        {"channels": [3 * g, 4 * g], "axis": 2, "direction": "down", "amount": 1},
        {"channels": [4 * g, channels], "axis": None, "direction": "none", "amount": 0},
    ]


# ---------------------------------------------------------------------------------------------- positive cases

@pytest.mark.parametrize("n_div, channels", [(8, 48), (12, 48), (16, 48), (12, 50), (8, 36)])
def test_shift_mid_graph_rewritten(n_div, channels):
    model = export(ConvShiftConv(channels, n_div), (1, 3, 6, 7))
    assert op_counts(model)["ScatterND"] == SCATTERS_PER_SHIFT
    out, result = assert_pass_verified(model, ReplaceShiftScatter(), tolerance=EXACT, shape=[3, 3, 6, 7])
    assert compare_models(model, out, shape=[1, 3, 6, 7], tolerance=EXACT).passed
    stats = result.stats
    assert stats["chains_rewritten"] == 1
    assert stats["scatternd_removed"] == SCATTERS_PER_SHIFT
    assert stats["skipped"] == {}
    assert stats["chains"][0]["groups"] == expected_groups(channels, n_div)
    # Only the rewrite is left between the convs: no index arithmetic, no ScatterND.
    assert op_counts(out) == {"Concat": 1, "Conv": 2, "Pad": 4, "Slice": 5}
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_whole_graph_shift_keeps_output_name():
    model = export(ShiftModule(12), (2, 24, 5, 5))
    out, result = assert_pass_verified(model, ReplaceShiftScatter(), tolerance=EXACT, shape=[3, 24, 5, 5])
    assert compare_models(model, out, shape=[1, 24, 5, 5], tolerance=EXACT).passed
    assert [o.name for o in out.graph.output] == ["y"]
    assert result.stats["chains"][0]["source"] == "x"
    assert "ScatterND" not in op_counts(out)


class TwoPixelShift(nn.Module):
    """Not ShiftViT's sizes: two-pixel shifts, groups of uneven width, and the copied channels in the middle."""

    def forward(self, x):
        out = torch.zeros_like(x)
        out[:, 0:3, :, :-2] = x[:, 0:3, :, 2:]  # left 2
        out[:, 3:10, :, :] = x[:, 3:10, :, :]  # unchanged
        out[:, 10:, 2:, :] = x[:, 10:, :-2, :]  # down 2
        return out


def test_other_shift_sizes_and_layouts():
    model = export(TwoPixelShift(), (1, 16, 5, 6))
    out, result = assert_pass_verified(model, ReplaceShiftScatter(), tolerance=EXACT, shape=[3, 16, 5, 6])
    assert compare_models(model, out, shape=[1, 16, 5, 6], tolerance=EXACT).passed
    assert result.stats["chains"][0]["groups"] == [
        {"channels": [0, 3], "axis": 3, "direction": "left", "amount": 2},
        {"channels": [3, 10], "axis": None, "direction": "none", "amount": 0},
        {"channels": [10, 16], "axis": 2, "direction": "down", "amount": 2},
    ]
    assert op_counts(out) == {"Concat": 1, "Pad": 2, "Slice": 3}


def test_shift_after_onnxsim_with_fixed_shape():
    """onnxsim with a pinned input shape folds zeros_like(x) into a zeros initializer and the indices into
    constants; the chain is still recognised (its source is found on the updates' slicing path)."""
    from graphopt.passes.simplify import Simplify

    model, _ = run_pass(export(ConvShiftConv(48, 12), (1, 3, 6, 7)), Simplify(fixed_input_shape={"x": [2, 3, 6, 7]}))
    assert "ConstantOfShape" not in op_counts(model) and op_counts(model)["ScatterND"] == SCATTERS_PER_SHIFT
    out, result = assert_pass_verified(model, ReplaceShiftScatter(), tolerance=EXACT, shape=[2, 3, 6, 7])
    assert result.stats["scatternd_removed"] == SCATTERS_PER_SHIFT
    assert result.stats["chains"][0]["groups"] == expected_groups(48, 12)
    assert "ScatterND" not in op_counts(out)


def test_rewrite_matches_torch_at_several_batch_sizes():
    import onnxruntime as ort

    module = ConvShiftConv(48, 12)
    out, _ = run_pass(export(module, (1, 3, 6, 7)), ReplaceShiftScatter())
    sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 5):
        x = torch.randn(batch, 3, 6, 7)
        with torch.no_grad():
            ref = module(x).numpy()
        np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], ref, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- negative cases

def test_graph_without_scatternd_unchanged():
    model = model_from_text("""
        <ir_version: 8, opset_import: ["" : 12]>
        g (float[N, 4, 5, 5] x) => (float[N, 4, 5, 5] y) {
            r = Relu(x)
            y = Add(r, x)
        }""")
    result = assert_pass_unchanged(model, ReplaceShiftScatter())
    assert result.stats == {"chains_rewritten": 0, "scatternd_removed": 0, "chains": [], "skipped": {}}


class OnesBufferShift(nn.Module):
    def forward(self, x):
        g = x.shape[1] // 4
        out = torch.ones_like(x)
        out[:, :g, :, :-1] = x[:, :g, :, 1:]
        out[:, g:, :, :] = x[:, g:, :, :]
        return out


class InputBufferShift(nn.Module):
    """Writes the shifted slice over the input's own values: not a zeros buffer."""

    def forward(self, x):
        g = x.shape[1] // 4
        out = x.clone()
        out[:, :g, :, :-1] = x[:, :g, :, 1:]
        return out


class OtherTensorShift(nn.Module):
    """One update is a slice of 2 * x, not of the tensor whose shape made the buffer."""

    def forward(self, x):
        g = x.shape[1] // 4
        z = x * 2
        out = torch.zeros_like(x)
        out[:, :g, :, :-1] = z[:, :g, :, 1:]
        out[:, g:, :, :] = x[:, g:, :, :]
        return out


class SecondInputShift(nn.Module):
    """Zeros shaped like x0, but one slice comes from another input x1."""

    def forward(self, x0, x1):
        g = x0.shape[1] // 4
        out = torch.zeros_like(x0)
        out[:, :g, :, :-1] = x1[:, :g, :, 1:]
        out[:, g:, :, :] = x0[:, g:, :, :]
        return out


class OverlappingShift(nn.Module):
    """Two writes cover channels [g, 2g): later wins in ONNX, but the pass refuses to guess the intent."""

    def forward(self, x):
        g = x.shape[1] // 4
        out = torch.zeros_like(x)
        out[:, :2 * g, :, :-1] = x[:, :2 * g, :, 1:]
        out[:, g:3 * g, :, 1:] = x[:, g:3 * g, :, :-1]
        out[:, 3 * g:, :, :] = x[:, 3 * g:, :, :]
        return out


class StridedShift(nn.Module):
    """Every other column: a strided slice, not a box, so not Slice + Pad."""

    def forward(self, x):
        out = torch.zeros_like(x)
        out[:, :, :, ::2] = x[:, :, :, ::2]
        return out


class NoCopyShift(nn.Module):
    """The shifted groups only: the other channels stay zero, which Slice + Pad of x cannot produce."""

    def forward(self, x):
        g = x.shape[1] // 4
        out = torch.zeros_like(x)
        out[:, :g, :, :-1] = x[:, :g, :, 1:]
        out[:, g:2 * g, :, 1:] = x[:, g:2 * g, :, :-1]
        return out


class FirstItemShift(nn.Module):
    """Only batch item 0 is written: depends on the batch, cannot be a batch-independent Slice."""

    def forward(self, x):
        out = torch.zeros_like(x)
        out[:1, :, :, :-1] = x[:1, :, :, 1:]
        return out


@pytest.mark.parametrize("module, n_inputs, reason", [
    (OnesBufferShift(), 1, "buffer is filled with a non-zero value"),
    (InputBufferShift(), 1, "buffer is not a zeros_like (ConstantOfShape) tensor"),
    (OtherTensorShift(), 1, "updates pass through Mul"),
    (SecondInputShift(), 2, "updates read a tensor other than the buffer's shape source"),
    (OverlappingShift(), 1, "chain writes overlapping regions"),
    (StridedShift(), 1, "written region is not a box"),
    (NoCopyShift(), 1, "some channels are never written"),
    (FirstItemShift(), 1, "only part of the batch is written"),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else None)
def test_almost_a_shift_left_alone(module, n_inputs, reason):
    model = export(module, (2, 16, 4, 5), n_inputs=n_inputs)
    scatters = op_counts(model)["ScatterND"]
    result = assert_pass_unchanged(model, ReplaceShiftScatter())
    assert result.stats["chains_rewritten"] == 0
    skipped = result.stats["skipped"]
    assert sum(skipped.values()) == scatters, skipped
    assert any(r.startswith(reason) for r in skipped), skipped


def test_arbitrary_indices_left_alone():
    # Each element lands somewhere a fixed index table says (here: h and w swapped), not a shifted slice.
    idx = [[0, c, h, w] for c in range(2) for w in range(2) for h in range(2)]
    flat = ",".join(str(v) for row in idx for v in row)
    model = model_from_text(f"""
        <ir_version: 8, opset_import: ["" : 12]>
        g (float[1, 2, 2, 2] x) => (float[1, 2, 2, 2] y) {{
            s = Shape(x)
            buf = ConstantOfShape <value: tensor = float[1] {{0}}> (s)
            i = Constant <value: tensor = int64[8, 4] {{{flat}}}> ()
            n = Constant <value: tensor = int64[1] {{8}}> ()
            u = Reshape(x, n)
            y = ScatterND(buf, i, u)
        }}""")
    result = assert_pass_unchanged(model, ReplaceShiftScatter())
    assert result.stats["skipped"] == {"indices are not a shifted slice (offsets vary within a channel)": 1}


def test_constant_buffer_of_ones_left_alone():
    model = model_from_text("""
        <ir_version: 8, opset_import: ["" : 12]>
        g (float[1, 2, 3, 3] x) => (float[1, 2, 3, 3] y) {
            buf = Constant <value: tensor = float[1, 2, 3, 3] {1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1}> ()
            i = Constant <value: tensor = int64[1, 2] {0, 0}> ()
            st = Constant <value: tensor = int64[1] {0}> ()
            e1 = Constant <value: tensor = int64[1] {1}> ()
            ax = Constant <value: tensor = int64[1] {1}> ()
            u = Slice(x, st, e1, ax)
            y = ScatterND(buf, i, u)
        }""")
    result = assert_pass_unchanged(model, ReplaceShiftScatter())
    assert result.stats["skipped"] == {"buffer is a constant with non-zero values": 1}


def test_intermediate_result_used_elsewhere_left_alone():
    model = model_from_text("""
        <ir_version: 8, opset_import: ["" : 12]>
        g (float[1, 2, 3, 3] x) => (float[1, 2, 3, 3] y, float[1, 2, 3, 3] partial) {
            s = Shape(x)
            buf = ConstantOfShape <value: tensor = float[1] {0}> (s)
            i0 = Constant <value: tensor = int64[1, 2] {0, 0}> ()
            i1 = Constant <value: tensor = int64[1, 2] {0, 1}> ()
            st = Constant <value: tensor = int64[1] {0}> ()
            e1 = Constant <value: tensor = int64[1] {1}> ()
            e2 = Constant <value: tensor = int64[1] {2}> ()
            ax = Constant <value: tensor = int64[1] {1}> ()
            u0 = Slice(x, st, e1, ax)
            u1 = Slice(x, e1, e2, ax)
            partial = ScatterND(buf, i0, u0)
            y = ScatterND(partial, i1, u1)
        }""")
    result = assert_pass_unchanged(model, ReplaceShiftScatter())
    assert result.stats["skipped"] == {"an intermediate chain result is used elsewhere": 2}


def test_bad_parameters():
    with pytest.raises(ValueError):
        ReplaceShiftScatter(probe_batches=[])
    with pytest.raises(ValueError):
        ReplaceShiftScatter(probe_batches=[0])


# ---------------------------------------------------------------------------------------------- the map reader

def test_decompose_reads_shift_groups():
    x = np.arange(1 * 2 * 3 * 4).reshape(1, 2, 3, 4)
    where_from = np.full(x.shape, -1)
    where_from[:, 0, :, :-1] = x[:, 0, :, 1:]  # left
    where_from[:, 1] = x[:, 1]  # copied
    assert decompose_shift_map(where_from) == [ShiftGroup(0, 1, (0, 0, 1), ((0, 3), (0, 3))),
                                               ShiftGroup(1, 2, (0, 0, 0), ((0, 3), (0, 4)))]


def test_simulate_refuses_duplicate_indices():
    indices = np.array([[0, 0], [0, 0]])
    updates = np.zeros((2, 3, 3), dtype=np.int64)
    assert isinstance(simulate_scatter_chain((1, 2, 3, 3), [(indices, updates)]), NoMatch)


# ---------------------------------------------------------------------------------------------- the real model

@pytest.fixture(scope="module")
def shiftvit() -> onnx.ModelProto:
    from graphopt.commands.export import export_cached

    path, _ = export_cached("shiftvit_t_light")
    return onnx.load(str(path))


def test_shiftvit_t_light_all_scatters_removed(shiftvit):
    assert op_counts(shiftvit)["ScatterND"] == 60
    out, result = assert_pass_verified(shiftvit, ReplaceShiftScatter(), tolerance=EXACT, shape=[3, 3, 224, 224])
    assert compare_models(shiftvit, out, shape=[1, 3, 224, 224], samples=1, tolerance=EXACT).passed
    stats = result.stats
    assert stats["chains_rewritten"] == 12
    assert stats["scatternd_removed"] == 60
    assert stats["skipped"] == {}
    assert "ScatterND" not in op_counts(out)
    widths = [c["groups"][-1]["channels"][1] for c in stats["chains"]]
    assert widths == [96] * 2 + [192] * 2 + [384] * 6 + [768] * 2
    for chain, channels in zip(stats["chains"], widths):
        assert chain["groups"] == expected_groups(channels, 12)


def test_shape_proxy_gives_the_full_inference_shapes_outside_the_chains(shiftvit):
    """The proxy model (each chain's last ScatterND -> Cast of its source, dead index arithmetic dropped) types
    every tensor it keeps as inference over the whole graph does, chain sources included, from far fewer nodes."""
    from graphopt.core.ir import inferred_types, to_graph
    from graphopt.passes._scatter_chain import find_chains, match_structure, shape_proxy

    graph = to_graph(shiftvit)
    chains = [c for c in find_chains(graph) if match_structure(c) is None]
    assert len(chains) == 12 and all(c.src is not None for c in chains)
    proxy = shape_proxy(graph, chains)
    assert len(proxy.graph.node) < len(shiftvit.graph.node) / 3
    fast, full = inferred_types(graph, proxy), inferred_types(graph)
    assert all(fast[c.src.name][0] is not None for c in chains)
    shared = set(fast) & set(full)
    assert len(shared) > 300  # every tensor the proxy keeps: block inputs, norms, MLPs, the head
    assert {n: fast[n] for n in shared} == {n: full[n] for n in shared}


def misread(where_from: np.ndarray) -> list[ShiftGroup]:
    """``decompose_shift_map`` with the first group's "left by one" read as "copy", same window: a valid graph
    with wrong values."""
    groups = decompose_shift_map(where_from)
    first = groups[0]
    return [ShiftGroup(first.c0, first.c1, (0,) * len(first.offset), first.window)] + groups[1:]


def test_wrong_mapping_is_caught_by_the_probe(monkeypatch):
    """The safety net: if the map were misread, the rewrite would disagree with the chain on the random probe,
    and the chain must stay as it is."""
    import graphopt.passes.replace_shift_scatter as rss

    monkeypatch.setattr(rss, "decompose_shift_map", misread)
    model = export(ShiftModule(8), (1, 16, 4, 5))
    result = assert_pass_unchanged(model, ReplaceShiftScatter())
    assert result.stats["skipped"] == {"rewrite disagrees with the chain on a random probe": SCATTERS_PER_SHIFT}


# ---------------------------------------------------------------------------------------------- shared outcomes

class StagedShifts(nn.Module):
    """Shifts as a ShiftViT backbone has them: two alike in a row, one that differs only in a constant (n_div),
    one that differs only in its input's shape (after a downsampling conv)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mid = nn.Conv2d(32, 32, 1)
        self.down = nn.Conv2d(32, 64, 2, stride=2)
        self.shift, self.finer = ShiftModule(8), ShiftModule(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shift(self.mid(self.shift(x)))
        x = self.finer(self.mid(x))
        return self.shift(self.down(x))


def count_sessions(monkeypatch) -> list[int]:
    """Node counts of the probe models the pass opens onnxruntime sessions on, as it opens them."""
    import graphopt.core.subgraph_check as subgraph_check

    sizes: list[int] = []
    real = subgraph_check.create_session

    def counting(model: onnx.ModelProto, *args, **kwargs):
        sizes.append(len(model.graph.node))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(subgraph_check, "create_session", counting)
    return sizes


def test_alike_chains_are_probed_once(monkeypatch):
    sessions = count_sessions(monkeypatch)
    model = export(StagedShifts(), (1, 32, 6, 6))
    out, result = assert_pass_verified(model, ReplaceShiftScatter(), tolerance=EXACT, shape=[3, 32, 6, 6])
    assert compare_models(model, out, shape=[1, 32, 6, 6], tolerance=EXACT).passed
    stats = result.stats
    assert stats["chains_rewritten"] == 4
    assert stats["skipped"] == {}
    assert [c["groups"] for c in stats["chains"]] == [expected_groups(32, 8)] * 2 + [expected_groups(32, 16),
                                                                                      expected_groups(64, 8)]
    # A session on each distinct chain and one on its rewrite: the second n_div=8 chain on 32 channels takes the
    # first one's verified map; another constant or another input shape makes another chain.
    assert len(sessions) == 6


def test_alike_chains_share_a_refusal(monkeypatch):
    import graphopt.passes.replace_shift_scatter as rss

    sessions = count_sessions(monkeypatch)
    monkeypatch.setattr(rss, "decompose_shift_map", misread)
    model = export(nn.Sequential(ShiftModule(8), ShiftModule(8)), (1, 16, 4, 5))
    result = assert_pass_unchanged(model, ReplaceShiftScatter())
    assert result.stats["skipped"] == {"rewrite disagrees with the chain on a random probe": 2 * SCATTERS_PER_SHIFT}
    assert len(sessions) == 2  # the first chain and its rewrite
