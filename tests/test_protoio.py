"""graphopt.core.wire and onnx_files: models read with their weights straight into arrays, streamed back out."""
from __future__ import annotations

import io

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from graphopt.core import files, forms, ir, onnx_files, wire
from graphopt.core.errors import UserError
from graphopt.core.runner import Runner


def mixed_model() -> onnx.ModelProto:
    """Every kind of initializer the reader must tell apart: large float32 / float16 / int64 weights (held as
    arrays), a small one (inline), a large bfloat16 (no numpy type: inline), one in float_data rather than raw_data
    (inline), a tensor with fields after raw_data (doc_string), plus graph and model fields after the initializers
    (value_info, metadata_props)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 32)).astype(np.float32)
    w16 = rng.standard_normal((32, 32)).astype(np.float16)
    idx = rng.integers(0, 32, size=(200,)).astype(np.int64)
    small = rng.standard_normal((4,)).astype(np.float32)
    bias = rng.standard_normal((32,)).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(w16, "w16"),
             onnx.numpy_helper.from_array(idx, "idx"), onnx.numpy_helper.from_array(small, "small"),
             oh.make_tensor("bias_floats", onnx.TensorProto.FLOAT, [32], bias.tolist()),
             oh.make_tensor("bf16", onnx.TensorProto.BFLOAT16, [32, 32], np.zeros(1024, np.uint16).tobytes(),
                            raw=True)]
    inits[0].doc_string = "a weight with a field after raw_data"
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"]),
             oh.make_node("Cast", ["w16"], ["w16f"], to=onnx.TensorProto.FLOAT),
             oh.make_node("MatMul", ["h", "w16f"], ["h2"]),
             oh.make_node("Add", ["h2", "bias_floats"], ["h3"]),
             oh.make_node("Gather", ["h3", "idx"], ["g"], axis=1),
             oh.make_node("ReduceSum", ["g"], ["r"], keepdims=1),
             oh.make_node("Mul", ["r", "small"], ["y"])]
    graph = oh.make_graph(nodes, "mixed", [oh.make_tensor_value_info("x", 1, ["N", 32])],
                          [oh.make_tensor_value_info("y", 1, [1, 4])], inits,
                          value_info=[oh.make_tensor_value_info("h", 1, ["N", 32])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)], producer_name="test")
    model.ir_version = 8
    oh.set_model_props(model, {"k": "v"})
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def saved(tmp_path):
    model = mixed_model()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return model, path


def _written(split: wire.SplitModel) -> bytes:
    buf = io.BytesIO()
    n = wire.write_inline(buf, split)
    assert n == len(buf.getvalue())
    return buf.getvalue()


def test_read_holds_large_weights_as_arrays_and_the_rest_inline(saved):
    model, path = saved
    split = wire.read_split(path)
    assert list(split.weights) == ["w", "w16", "idx"]  # the skeleton's order
    for name, arr in split.weights.items():
        want = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))
        assert arr.dtype == want.dtype and arr.shape == want.shape and np.array_equal(arr, want)
    inline = {t.name for t in split.skeleton.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL}
    assert inline == {"small", "bias_floats", "bf16"}
    assert split.skeleton.ByteSize() < 4096  # the weights are not in it
    assert split.skeleton.graph.initializer[0].doc_string == "a weight with a field after raw_data"


def test_written_file_equals_the_whole_model_serialized(saved):
    model, path = saved
    assert _written(wire.read_split(path)) == model.SerializeToString()


def test_split_graph_writes_what_gs_export_would(saved):
    _, path = saved
    graph = forms.graph_from_split(wire.read_split(path))
    assert _written(forms.split_graph(graph)) == ir.to_model(graph).SerializeToString()


def test_graph_constants_are_the_arrays_not_copies(saved):
    _, path = saved
    split = wire.read_split(path)
    graph = forms.graph_from_split(split)
    for name, arr in split.weights.items():
        assert graph.tensors()[name].values is arr
    again = forms.split_graph(graph)
    assert all(again.weights[n] is split.weights[n] for n in split.weights)


def test_external_data_is_read_into_arrays(saved, tmp_path):
    model, _ = saved
    ext = tmp_path / "ext"
    ext.mkdir()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx.save_model moves the weights of the model it saves out of it
    onnx.save_model(copy, ext / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=1024)
    split = wire.read_split(ext / "m.onnx")
    assert split.had_external_data
    assert set(split.weights) >= {"w", "idx"}
    assert _written(split) == model.SerializeToString()


@pytest.mark.parametrize("external", [False, True])
def test_reuse_shares_only_byte_identical_weights(saved, tmp_path, external):
    """B read with reuse=A's weights: a weight equal to A's (bytes, type, shape) is A's array; one that differs
    in a single element, or only in shape, is B's own, with B's values."""
    model, path = saved
    a = wire.read_split(path)
    b_model = onnx.ModelProto()
    b_model.CopyFrom(model)
    for t in b_model.graph.initializer:
        if t.name == "w16":  # its last element changed
            arr = onnx.numpy_helper.to_array(t).copy()
            arr[-1, -1] += 1
            t.CopyFrom(onnx.numpy_helper.from_array(arr, "w16"))
    folder = tmp_path / f"b{int(external)}"
    folder.mkdir()
    onnx.save_model(b_model, folder / "b.onnx", save_as_external_data=external, location="b.data",
                    size_threshold=1024)
    reuse = {**a.weights, "idx": a.weights["idx"].reshape(10, 20)}  # same bytes, other shape
    b = wire.read_split(folder / "b.onnx", reuse=reuse)
    assert b.weights["w"] is a.weights["w"]
    assert b.weights["w16"] is not a.weights["w16"]
    assert b.weights["idx"] is not reuse["idx"] and b.weights["idx"].shape == (200,)
    for t in model.graph.initializer:
        if t.name in ("w", "idx"):
            assert np.array_equal(b.weights[t.name], onnx.numpy_helper.to_array(t))
    assert b.weights["w16"][-1, -1] == a.weights["w16"][-1, -1] + 1
    assert wire._file_holds(io.BytesIO(b"abcdefgh"), 2, memoryview(b"cdef"), chunk=3)
    assert not wire._file_holds(io.BytesIO(b"abcdefgh"), 2, memoryview(b"cdeX"), chunk=3)
    assert not wire._file_holds(io.BytesIO(b"abc"), 2, memoryview(b"cd"), chunk=3)  # the file ends first


def test_missing_external_data_is_a_one_line_error(saved, tmp_path):
    model, _ = saved
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save_model(model, ext / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=1024)
    (ext / "m.onnx.data").unlink()
    with pytest.raises(UserError, match=r"external data file 'm.onnx.data' .* is missing"):
        onnx_files.load_split(ext / "m.onnx")


@pytest.mark.parametrize("cut", [0.3, 0.9, 0.9999])
def test_truncated_file_is_a_one_line_error(saved, tmp_path, cut):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(UserError, match=r"cut.onnx: (not a readable ONNX model|invalid ONNX model)") as e:
        onnx_files.load_split(bad)
    assert "\n" not in str(e.value)


def test_empty_and_garbage_files(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"empty.onnx: not an ONNX model \(empty graph\)"):
        onnx_files.load_split(empty)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(UserError, match="junk.onnx: (not a readable ONNX model|not an ONNX model|invalid)"):
        onnx_files.load_split(junk)


def test_raw_data_of_the_wrong_size_is_refused_by_the_checker(tmp_path):
    model = mixed_model()
    w = next(t for t in model.graph.initializer if t.name == "w")
    w.raw_data = w.raw_data[:-4]
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    split = wire.read_split(path)
    assert "w" not in split.weights  # kept inline, as read
    with pytest.raises(UserError, match=r"bad.onnx: invalid ONNX model \(.*raw_data size"):
        onnx_files.load_split(path)


def test_checker_sees_structure_errors_in_the_skeleton(saved):
    _, path = saved
    split = wire.read_split(path)
    split.skeleton.graph.node[0].input[0] = "nowhere"
    with pytest.raises(onnx.checker.ValidationError, match="nowhere"):
        onnx_files.check_split(split)
    onnx_files.check_split(wire.read_split(path))  # and the untouched model passes


def test_onnxruntime_runs_the_split_model_as_the_whole_one(saved):
    model, path = saved
    x = [np.random.default_rng(2).standard_normal((3, 32)).astype(np.float32)]
    want = Runner(model.SerializeToString()).run(x)
    got = Runner(wire.read_split(path)).run(x)
    assert np.array_equal(want["y"], got["y"])


def test_save_model_streams_a_graph_and_keeps_external_data(saved, tmp_path):
    model, path = saved
    graph = forms.graph_from_split(onnx_files.load_split(path))
    assert onnx_files.save_model(graph, tmp_path / "out.onnx") == [tmp_path / "out.onnx"]
    assert (tmp_path / "out.onnx").read_bytes() == ir.to_model(graph).SerializeToString()
    files = onnx_files.save_model(graph, tmp_path / "ext" / "out.onnx", external=True)
    assert [f.name for f in files] == ["out.onnx", "out.onnx.data"]
    back = {t.name: t for t in onnx_files.load_model(tmp_path / "ext" / "out.onnx").graph.initializer}
    assert set(back) == {t.name for t in model.graph.initializer} - {"bf16"}  # unused: onnx-graphsurgeon drops it
    for t in model.graph.initializer[:-1]:
        assert np.array_equal(onnx.numpy_helper.to_array(back[t.name]).view(np.uint8),
                              onnx.numpy_helper.to_array(t).view(np.uint8)), t.name
    assert not list(tmp_path.glob("**/*.tmp"))


def test_saving_starts_the_writeback_chunk_by_chunk(saved, tmp_path, monkeypatch):
    """Files are written back to disk while they are written (each chunk's writeback started), so the closing
    fsync only waits for the tail; the bytes are the same, inline or as external data (whose writer seeks)."""
    model, path = saved
    started = []
    monkeypatch.setattr(files, "_WRITEBACK_CHUNK", 1024)
    real = files._start_writeback
    monkeypatch.setattr(files, "_start_writeback", lambda fd, off, n: (started.append((off, n)), real(fd, off, n)))
    split = onnx_files.load_split(path)
    onnx_files.save_model(split, tmp_path / "out.onnx")
    data = (tmp_path / "out.onnx").read_bytes()
    assert data == model.SerializeToString()
    # consecutive ranges from the start, each at least a chunk, covering all but a tail under one write's size
    assert started[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(started, started[1:]))
    assert all(n >= 1024 for _, n in started) and sum(n for _, n in started) > len(data) - 4096
    started.clear()
    onnx_files.save_model(split, tmp_path / "ext" / "out.onnx", external=True)
    assert started and onnx_files.load_model(tmp_path / "ext" / "out.onnx").graph.initializer[0].raw_data == \
        model.graph.initializer[0].raw_data


def test_split_model_of_a_proto_matches_reading_its_file(saved):
    model, path = saved
    from_proto = forms.split_model(model)
    assert list(from_proto.weights) == list(wire.read_split(path).weights)
    assert _written(from_proto) == model.SerializeToString()


def test_over_two_gib_refused_before_writing():
    model = mixed_model()
    split = forms.split_model(model)
    # A view standing in for a 2 GiB weight: write_inline sizes the message before writing a byte.
    split.weights["w"] = np.broadcast_to(np.float32(0), (1 << 29, 1))
    buf = io.BytesIO()
    with pytest.raises(ValueError, match="over protobuf's 2 GiB limit"):
        wire.write_inline(buf, split)
    assert buf.getvalue() == b""


def test_session_feeds_the_weights_in_place_and_lists_only_the_model_inputs(saved):
    model, path = saved
    split = wire.read_split(path)
    runner = Runner(split)
    assert runner.input_name == "x"
    assert all(np.shares_memory(runner.weights[n], split.weights[n]) for n in split.weights)  # no copy
    x = [np.random.default_rng(3).standard_normal((2, 32)).astype(np.float32)]
    np.testing.assert_allclose(runner.run(x)["y"], Runner(model.SerializeToString()).run(x)["y"], rtol=1e-5, atol=1e-5)


def test_session_of_a_model_listing_its_initializers_as_inputs(tmp_path):
    """IR version 3 models list every initializer among the graph inputs too; they are fed once, not twice."""
    model = mixed_model()
    model.graph.input.extend(oh.make_tensor_value_info(t.name, t.data_type, t.dims) for t in model.graph.initializer)
    model.ir_version = 3
    path = tmp_path / "ir3.onnx"
    path.write_bytes(model.SerializeToString())
    runner = Runner(wire.read_split(path))
    assert runner.input_name == "x"
    assert runner.run([np.ones((1, 32), np.float32)])["y"].shape == (1, 4)


def test_with_nodes_exports_the_part_and_leaves_the_graph_alone():
    """``forms.with_nodes``: a graph of some nodes, exported with the whole graph's interface, opsets and model
    fields; the nodes' subgraphs keep pointing at the graph's own function list (gs's constructor would repoint
    them)."""
    then = oh.make_graph([oh.make_node("Neg", ["a"], ["t"])], "then", [],
                         [oh.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [2])])
    other = oh.make_graph([oh.make_node("Abs", ["a"], ["e"])], "else", [],
                          [oh.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [2])])
    nodes = [oh.make_node("Relu", ["x"], ["a"]), oh.make_node("Sigmoid", ["x"], ["unused"]),
             oh.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2]),
                                       oh.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], producer_name="kept")
    g = forms.import_graph(model)
    part = forms.with_nodes(g, [n for n in g.nodes if n.op != "Sigmoid"])
    out = forms.export_graph(part)
    onnx.checker.check_model(out, full_check=True)
    assert [n.op_type for n in out.graph.node] == ["Relu", "If"] and out.producer_name == "kept"
    assert [n.op for n in g.nodes] == ["Relu", "Sigmoid", "If"]
    assert all(sub._functions is g._functions for sub in g.subgraphs(recursive=True))
