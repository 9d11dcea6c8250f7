"""A BERT-style text encoder (two int64 inputs, input_ids and attention_mask, dynamic batch x sequence) through
`graphopt apply` (generic passes), `verify`, `diff`, `bisect` (a planted wrong pass) and `precision`: built from a
small transformers BertConfig with random weights (no download), exported once and cached like the corpus.
transformers is a test dependency (setup.cfg's test extras), imported where the model is built."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphopt.core.errors import UserError
from graphopt.commands.export import cache_dir
from graphopt.core.files import atomic_write_bytes
from graphopt.core.runner import Runner
from graphopt.core.pass_infra import Pass, PassResult, register_pass
from graphs import cli, torch_onnx

CONFIG = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
              max_position_embeddings=64)
OUTPUTS = ("last_hidden_state", "pooler_output")
# Bump when the export below changes.
FORMAT = 1


def bert_export() -> Path:
    """The cached export: seed 0 random weights, opset 17, inputs input_ids and attention_mask (int64), dynamic
    batch x sequence."""
    import torch
    import transformers

    key = hashlib.sha256(json.dumps([FORMAT, CONFIG, torch.__version__, transformers.__version__,
                                     onnx.__version__]).encode()).hexdigest()[:16]
    path = cache_dir() / "text" / f"bert-tiny-{key}.onnx"
    if path.is_file():
        return path

    class Encoder(torch.nn.Module):  # keyword arguments: BertModel's positional ones differ between versions
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.bert = transformers.BertModel(transformers.BertConfig(**CONFIG, attn_implementation="eager")).eval()

        def forward(self, input_ids, attention_mask):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
            return out.last_hidden_state, out.pooler_output

    ids = torch.randint(0, CONFIG["vocab_size"], (2, 8))
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}}
    atomic_write_bytes(path, torch_onnx(Encoder().eval(), (ids, torch.ones_like(ids)), opset=17,
                                        inputs=("input_ids", "attention_mask"), outputs=OUTPUTS, dynamic_axes=axes))
    return path


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bert")
    path = folder / "bert.onnx"
    path.write_bytes(bert_export().read_bytes())
    return path


RECIPE = """\
model: {onnx: bert.onnx}
inputs:
  - {name: input_ids, shape: [2, 16]}          # attention_mask follows: [batch, sequence] = [2, 16]
  - {name: attention_mask, values: [0, 1, 1, 1]}
passes:
  - fold_constants
  - softmax_transpose
  - gelu_precision
verify:
  tolerance:
    outputs:
      pooler_output: {top1: false}           # features, not class scores
atc:
  batch_sizes: [1, 8]
"""


def test_apply_and_verify_a_text_encoder(bert, tmp_path, capsys):
    (bert.parent / "r.yaml").write_text(RECIPE)
    run = tmp_path / "run"
    code, out, err = cli(capsys, "apply", bert.parent / "r.yaml", "-o", run)
    assert code == 0, err
    report = json.loads((run / "report.json").read_text())
    assert [(i["name"], i["dtype"], i["shape"]) for i in report["inputs"]] == [
        ("input_ids", "int64", [2, 16]), ("attention_mask", "int64", [2, 16])]
    ids = report["inputs"][0]
    assert ids["range"] == [0, CONFIG["vocab_size"]] and "word_embeddings" in ids["note"]
    passes = {p["name"]: p for p in report["passes"]}
    assert passes["fold_constants"]["status"] == "applied" and passes["fold_constants"]["verify"]["passed"]
    assert passes["softmax_transpose"]["stats"]["rewritten"] == 2 and passes["softmax_transpose"]["verify"]["passed"]
    assert sum(passes["gelu_precision"]["stats"]["found"].values()) == 2
    final = {o["name"]: o for o in report["final_verify"]["outputs"]}
    assert report["final_verify"]["passed"] and final["pooler_output"]["top1_agreement"] is None
    atc = (run / "atc.sh").read_text()
    assert "--input_format=ND '--input_shape=input_ids:8,16;attention_mask:8,16'" in atc
    # the result against the source, at the default shapes and at another batch and sequence
    code, out, err = cli(capsys, "verify", bert, run / "model.onnx")
    assert code == 0, (out, err)
    assert "last_hidden_state: max_abs" in out and "pooler_output:" in out
    code, out, err = cli(capsys, "verify", bert, run / "model.onnx", "--input", "input_ids:3,7:int64",
                         "--range", "input_ids:0,100")
    assert code == 0, (out, err)


def test_input_errors_name_the_input_in_one_line(bert, tmp_path, capsys):
    code, _, err = cli(capsys, "verify", bert, bert, "--input", "input_ids:2,16:float32")
    assert code == 2 and err == ["graphopt: error: --input input_ids:2,16:float32: dtype is float32, the model "
                                 "expects input 'input_ids': int64 [batch, sequence]"]
    (bert.parent / "bad.yaml").write_text("model: {onnx: bert.onnx}\ninputs: [{name: attention_mask, dtype: bool}]\n")
    code, _, err = cli(capsys, "apply", bert.parent / "bad.yaml", "-o", tmp_path / "run")
    assert code == 2 and len(err) == 1
    assert err[0].endswith("bad.yaml: inputs[0].dtype is bool, the model expects input 'attention_mask': "
                           "int64 [batch, sequence]")
    # a feed without attention_mask: one line naming it, not onnxruntime's list of ~40 weight names
    with pytest.raises(UserError) as e:
        Runner(bert).run([{"input_ids": np.zeros((1, 4), np.int64)}])
    assert str(e.value) == "input 'attention_mask' is missing: the model expects int64 [batch, sequence]"


# ---------------------------------------------------------------------------------------------------------------
# graphopt diff and graphopt bisect on the text encoder


@register_pass("test_scale_token_embeddings")
class ScaleTokenEmbeddings(Pass):
    """Test-only, deliberately wrong: scales the constant table of the Gather that reads a graph input (the token
    embeddings read by input_ids) by 1.5 (a copy: the input graph's arrays are shared)."""

    def run(self, graph):
        import onnx_graphsurgeon as gs

        from graphopt.core.ir import const_value, make_name

        inputs = {t.name for t in graph.inputs}
        node = next(n for n in graph.nodes if n.op == "Gather" and n.inputs[1].name in inputs
                    and const_value(n.inputs[0]) is not None)
        table = const_value(node.inputs[0])
        node.inputs[0] = gs.Constant(make_name(graph, "table_scaled"), (table * 1.5).astype(table.dtype))
        return PassResult(True, {"scaled": 1})


GOOD_PASSES = "passes:\n  - softmax_transpose\n  - gelu_precision\n"


def _recipe(folder: Path, passes: str, name: str = "r") -> Path:
    """The RECIPE's inputs and tolerance with other passes (fold_constants left out: see
    _shape_inference_regressed)."""
    head, _, rest = RECIPE.partition("passes:\n")
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + head + passes + rest[rest.index("verify:"):])
    return path


def test_diff_a_text_encoder(bert, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = cli(capsys, "apply", _recipe(bert.parent, GOOD_PASSES), "-o", run)
    assert code == 0, err
    # the applied model against its source: every shared tensor, integer ones exactly, within tolerance
    code, out, err = cli(capsys, "diff", bert, run / "model.onnx", "--map", run / "report.json", "--plot", "",
                         "--json", tmp_path / "d.json", "--samples", "2")
    assert code == 0 and "no shared tensor is outside tolerance" in out, (out, err)
    data = json.loads((tmp_path / "d.json").read_text())
    assert [(i["name"], i["dtype"], i["shape"]) for i in data["inputs"]] == [
        ("input_ids", "int64", [2, 16]), ("attention_mask", "int64", [2, 16])]
    assert data["inputs"][0]["range"] == [0, CONFIG["vocab_size"]]
    exact = [t for t in data["tensors"] if t["exact"]]
    assert len(exact) > 10 and {t["exact"] for t in exact} == {"integer", "bool"}
    code, out, err = cli(capsys, "diff", bert, run / "model.onnx", "--plot", "", "--input", "input_ids:3,7:int64",
                         "--range", "attention_mask:1,2")
    assert code == 0, (out, err)
    # planted perturbations of the source: a float weight, and the int64 position-id buffer (off by one)
    model = onnx.load(str(bert))
    pos = next(i for i in model.graph.initializer if i.name == "bert.embeddings.position_embeddings.weight")
    pos.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(pos) + np.float32(0.25), pos.name))
    onnx.save(model, tmp_path / "float.onnx")
    code, out, err = cli(capsys, "diff", bert, tmp_path / "float.onnx", "--plot", "")
    assert code == 1, (out, err)
    assert "first divergent tensor '/bert/embeddings/position_embeddings/Gather_output_0' from Gather node" in out
    model = onnx.load(str(bert))
    node = next(n for n in model.graph.node if n.output[0] == "onnx::Slice_49")  # arange(64): the position ids
    buffer = onnx.numpy_helper.to_array(node.attribute[0].t)
    assert buffer.dtype == np.int64 and buffer[0, :3].tolist() == [0, 1, 2]
    node.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(buffer + 1, node.attribute[0].t.name))
    onnx.save(model, tmp_path / "ids.onnx")
    code, out, err = cli(capsys, "diff", bert, tmp_path / "ids.onnx", "--plot", "", "--max-abs", "100",
                         "--cosine", "0.5")
    assert code == 1, (out, err)
    assert ("first divergent tensor '/bert/embeddings/Slice_output_0' from Slice node '/bert/embeddings/Slice': "
            "16 element(s) differ (max_abs=1; integer tensors must be equal)") in out  # [1, 16]: one row


def test_bisect_a_text_encoder_names_the_planted_pass(bert, tmp_path, capsys):
    recipe = _recipe(bert.parent, "passes:\n  - softmax_transpose\n  - test_scale_token_embeddings\n"
                                  "  - gelu_precision\n", "planted")
    out_dir = tmp_path / "bisect"
    code, out, err = cli(capsys, "bisect", recipe, "-o", out_dir)
    assert code == 1, (out, err)
    assert "responsible: pass test_scale_token_embeddings (passes[1]) broke numerics" in out
    assert "reproduces on its own in onnxruntime: yes" in out
    report = json.loads((out_dir / "bisect.json").read_text())
    assert [p["status"] for p in report["passes"]] == ["applied", "responsible"]
    assert [(i["name"], i["dtype"]) for i in report["inputs"]] == [("input_ids", "int64"), ("attention_mask", "int64")]
    assert report["first_divergent"]["name"] == "/bert/embeddings/word_embeddings/Gather_output_0"
    sub = report["subgraph"]
    assert sub["check"]["reproduces"] and sub["before"]["ops"] == sub["after"]["ops"] == ["Gather"]
    assert sub["before"]["inputs"] == sub["after"]["inputs"] == ["input_ids"]
    assert sub["after"]["input_types"] == {"input_ids": "int64 [2, 16]"}
    # the saved token ids: int64, the very feed bisect ran (the recipe's verification set)
    from graphopt.commands.apply import input_plan, verification_feeds
    from graphopt.core.onnx_files import load_split
    from graphopt.commands.recipe import load_recipe

    r = load_recipe(recipe)
    feeds = verification_feeds(r, input_plan(r, load_split(bert, "model")))
    for side in ("before", "after"):
        model = onnx.load(str(out_dir / f"{side}.onnx"))
        assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [
            ("input_ids", onnx.TensorProto.INT64)]
        with np.load(out_dir / f"{side}_inputs.npz") as saved:
            assert saved.files == ["input_ids"] and saved["input_ids"].dtype == np.int64
            assert np.array_equal(saved["input_ids"], feeds[sub["sample"]]["input_ids"])
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "repro.py"], cwd=out_dir, capture_output=True, text=True, check=True)
    assert shown.stdout.startswith("max_abs ") and "cosine" in shown.stdout


def test_precision_of_a_text_encoder(bert, tmp_path, capsys):
    """graphopt precision on the .onnx: both int64 inputs fed (token ids drawn from [0, vocab), the mask as the
    model's defaults say), only float tensors emulated in fp16; a cosine target above what force_fp16 reaches
    makes the search keep op types in fp32 (ops_info.json)."""
    out = tmp_path / "precision"
    code, stdout, err = cli(capsys, "precision", bert, "-o", out, "--samples", "4", "--node-trials", "2",
                            "--input", "input_ids:1,8", "--range", "attention_mask:1,2", "--target-cosine", "0.9999999")
    assert code in (0, 1), err
    assert (out / "precision.md").is_file() and (out / "ops_info.json").is_file()
    report = json.loads((out / "precision.json").read_text())
    assert [(i["name"], i["dtype"], i["shape"]) for i in report["model"]["inputs"]] == [
        ("input_ids", "int64", [4, 8]), ("attention_mask", "int64", [4, 8])]
    assert report["model"]["inputs"][0]["range"] == [0, CONFIG["vocab_size"]]
    assert report["calibration"]["items"] == 4 and report["units"] > 0
    assert not report["baselines"]["force_fp16"]["passed"]  # 0.9999999 is beyond force_fp16 here
    kept = json.loads((out / "ops_info.json").read_text())["black-list"]["to-add"]
    assert kept and set(kept) <= {t["type"] for t in report["types"]}
    assert code == (0 if report["predicted"]["passed"] else 1)
    assert "input_ids int64 [4, 8]" in (out / "precision.md").read_text()
