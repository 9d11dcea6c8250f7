"""Recipe validation: every mistake is one line naming the file and YAML path, raised before anything runs."""
from __future__ import annotations

import sys
import textwrap

import onnx
import pytest

from graphopt.core.errors import UserError
from graphopt.commands.recipe import load_recipe
from graphopt.testing import model_from_text
from graphs import TINY, cli


@pytest.fixture
def tiny_onnx(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(model_from_text(TINY), path)
    return path


def write(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BASE = """
model: {onnx: tiny.onnx}
input: {name: x, shape: [1, 2, 3, 4]}
"""


def test_valid_recipe_parses(tmp_path, tiny_onnx):
    r = load_recipe(write(tmp_path, BASE + """
passes:
  - pass: softmax_transpose
    axis: -1
    shape: [null, 2, 3, 4]
  - simplify
verify: {samples: 3, tolerance: {max_abs: 1.0e-5, cosine: 0.9999}}
atc: {batch_sizes: [1, 8], soc_version: Ascend310P3}
"""))
    assert [p.name for p in r.passes] == ["softmax_transpose", "simplify"]
    assert r.passes[0].args == {"axis": -1, "shape": [None, 2, 3, 4]}
    assert r.verify.samples == 3 and r.verify.tolerance.max_abs == 1e-5 and r.verify.tolerance.top1_agreement == 1.0
    assert r.model.onnx == tiny_onnx and r.atc.batch_sizes == (1, 8)
    assert r.name == "r"


@pytest.mark.parametrize("extra, message", [
    ("passes:\n  - pass: softmax_transpos\n",
     "r.yaml: passes[0].pass: unknown pass 'softmax_transpos' (did you mean: softmax_transpose"),
    ("passes:\n  - simplify\n  - simplify\n  - pass: softmax_transpose\n    axis: last\n",
     "r.yaml: passes[2].axis: expected int, got str 'last'"),
    ("passes:\n  - pass: softmax_transpose\n    axes: -1\n",
     "r.yaml: passes[0].axes: unknown argument of pass 'softmax_transpose' (did you mean: axis?)"),
    ("passes:\n  - pass: softmax_transpose\n    axis: 9\n",
     "r.yaml: passes[0]: axis 9 is out of range for rank 4"),
    ("verify: {tolerance: {max_abs: small}}\n", "r.yaml: verify.tolerance.max_abs: expected float | null, got str"),
    ("verify: {samples: 0}\n", "r.yaml: verify.samples: must be at least 1"),
    ("verfy: {}\n", "r.yaml: verfy: unknown key (did you mean: verify?)"),
    ("atc: {precision_mode: allow_mixed_precision}\n", "r.yaml: atc.precision_mode: expected 'force_fp16' |"),
    ("atc: {batch_sizes: [0]}\n", "r.yaml: atc.batch_sizes: expected positive integers"),
    ("verify: {data: nowhere.npy}\n", "r.yaml: verify.data: nowhere.npy: no such file"),
    ("passes:\n  - pass: simplify\n    on_fail: ignore\n", "r.yaml: passes[0].on_fail: expected 'stop' | 'skip'"),
])
def test_mistakes_name_file_and_yaml_path(tmp_path, tiny_onnx, extra, message):
    with pytest.raises(UserError) as e:
        load_recipe(write(tmp_path, BASE + extra))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("- just\n- a list\n", "top level: expected a mapping, got list"),
    ("model: {onnx: missing.onnx}\ninput: {name: x, shape: [1]}\n", "model.onnx: missing.onnx: no such file"),
    ("model: {exporter: lvvit}\ninput: {name: x, shape: [1]}\n", "unknown exporter 'lvvit' (did you mean: lvvit_s"),
    ("model: {}\ninput: {name: x, shape: [1]}\n", "give exactly one of model.exporter or model.onnx"),
    ("model: {onnx: tiny.onnx}\ninputs: [{shape: [1]}]\n", "inputs[0].name: required key is missing"),
    ("model: {onnx: tiny.onnx}\ninput: {name: x, shape: [1, -3]}\n", "input.shape: expected dimensions >= 0"),
    ("model: {onnx: tiny.onnx}\ninput: {name: x}\ninputs: [{name: x}]\n", "give either input: (one input) or inputs:"),
    ("model: {onnx: tiny.onnx}\ninputs: [{name: x, rnage: [0, 2]}]\n",
     "inputs[0].rnage: unknown key (did you mean: range"),
    ("model: {onnx: tiny.onnx}\ninputs: [{name: x, dtype: int46}]\n",
     "inputs[0].dtype: unknown dtype 'int46' (did you mean: "),
    ("model: {onnx: tiny.onnx}\ninputs: [{name: x, range: [3, 1]}]\n", "inputs[0].range: [3, 1] is empty"),
    ("model: {onnx: tiny.onnx}\ninputs: [{name: x, range: [0, 2], values: [1]}]\n",
     "inputs[0]: give at most one of range, values, data"),
    ("model: {onnx: tiny.onnx}\ninputs: [{name: x, data: nope.npz}]\n", "inputs[0].data: nope.npz: no such file"),
    ("model: {onnx: tiny.onnx}\ninputs: [{name: x}, {name: x}]\n", "inputs[1].name: input 'x' is listed twice"),
    ("model: {onnx: tiny.onnx}\ninput: {name: x}\nverify: {tolerance: {outputs: {y: {max_ab: 1}}}}\n",
     "verify.tolerance.outputs.y.max_ab: unknown key (did you mean: max_abs"),
    ("model: {onnx: tiny.onnx}\ninput: {name: x}\nverify: {tolerance: {outputs: {y: {cosine: 2}}}}\n",
     "verify.tolerance.outputs.y.cosine: must be within (0, 1]"),
    ("model: {onnx: tiny.onnx}\ninput: {name: x}\nverify: {tolerance: {outputs: {y: {top1: 1}}}}\n",
     "verify.tolerance.outputs.y.top1: expected"),
    ("model: [unclosed\n", "invalid YAML at line 2"),
])
def test_structural_mistakes(tmp_path, tiny_onnx, text, message):
    with pytest.raises(UserError) as e:
        load_recipe(write(tmp_path, text))
    assert message in str(e.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_recipe(tmp_path / "absent.yaml")
    with pytest.raises(UserError, match="is a directory"):
        load_recipe(tmp_path)


def test_yaml_is_loaded_safely(tmp_path, tiny_onnx):
    # A python-object tag would run code under yaml.load; safe_load refuses it as invalid YAML.
    with pytest.raises(UserError, match="invalid YAML"):
        load_recipe(write(tmp_path, "name: !!python/object/apply:os.system ['true']\n" + BASE))


# ---------------------------------------------------------------------------------------------------------------
# Tolerances: a threshold no comparison can meet (or every one meets) is a recipe mistake, refused at load time,
# not a pass blamed for breaking numerics


@pytest.mark.parametrize("tolerance, message", [
    ("{cosine: 2}", "r.yaml: verify.tolerance.cosine: must be within (0, 1]"),
    ("{cosine: 1.0000001}", "r.yaml: verify.tolerance.cosine: must be within (0, 1]"),
    ("{cosine: 0}", "r.yaml: verify.tolerance.cosine: must be within (0, 1]"),
    ("{cosine: -0.5}", "r.yaml: verify.tolerance.cosine: must be within (0, 1]"),
    ("{cosine: .nan}", "r.yaml: verify.tolerance.cosine: must be within (0, 1]"),
    ("{top1_agreement: 1.5}", "r.yaml: verify.tolerance.top1_agreement: must be within [0, 1]"),
    ("{top1_agreement: -0.1}", "r.yaml: verify.tolerance.top1_agreement: must be within [0, 1]"),
    ("{max_abs: -1e-4}", "r.yaml: verify.tolerance.max_abs: must be a finite number >= 0"),
    ("{max_abs: .nan}", "r.yaml: verify.tolerance.max_abs: must be a finite number >= 0"),
    ("{max_rel: -1}", "r.yaml: verify.tolerance.max_rel: must be a finite number >= 0"),
    ("{max_rel: .inf}", "r.yaml: verify.tolerance.max_rel: must be a finite number >= 0"),
    ("{cosine: true}", "r.yaml: verify.tolerance.cosine: expected float | null, got bool True"),
    ("{max_abs: yes}", "r.yaml: verify.tolerance.max_abs: expected float | null, got bool True"),
    ("{max_abs: '1e-4'}", "r.yaml: verify.tolerance.max_abs: expected float | null, got str '1e-4'"),
])
def test_impossible_tolerances_are_recipe_errors(tmp_path, tiny_onnx, tolerance, message):
    with pytest.raises(UserError) as e:
        load_recipe(write(tmp_path, BASE + f"verify: {{tolerance: {tolerance}}}\n"))
    assert str(e.value).startswith(str(tmp_path / "r.yaml")) and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("tolerance, expected", [
    ("{cosine: 1, top1_agreement: 0, max_abs: 0, max_rel: 0}", (0.0, 0.0, 1.0, 0.0)),  # the closed ends
    ("{cosine: 1e-6, max_abs: null}", (None, None, 1e-6, 1.0)),  # the open end's neighbour
])
def test_tolerance_range_ends(tmp_path, tiny_onnx, tolerance, expected):
    t = load_recipe(write(tmp_path, BASE + f"verify: {{tolerance: {tolerance}}}\n")).verify.tolerance
    assert (t.max_abs, t.max_rel, t.cosine, t.top1_agreement) == expected


def test_tolerance_built_in_code_is_checked_too():
    from graphopt.core.tolerance import Tolerance

    with pytest.raises(ValueError, match="tolerance cosine: must be within"):
        Tolerance(cosine=2.0)
    with pytest.raises(ValueError, match="tolerance max_abs: must be a finite number"):
        Tolerance(max_abs=float("nan"))


# PyYAML reads YAML 1.1, where a float needs a dot and a signed exponent: `1e-4` would be the string '1e-4'.
@pytest.mark.parametrize("text, value", [
    ("1e-4", 1e-4), ("1E-4", 1e-4), ("5e-5", 5e-5), ("1e+3", 1000.0), ("2e3", 2000.0), ("1.0e-4", 1e-4),
    ("1.5e3", 1500.0), ("-1e-4", -1e-4), ("+1e-4", 1e-4), ("-.5", -0.5), (".5", 0.5), ("1.", 1.0),
])
def test_yaml_floats_are_read_as_yaml_1_2_reads_them(text, value):
    from graphopt.commands.yaml_reader import load_yaml

    got = load_yaml(f"v: {text}")["v"]
    assert type(got) is float and got == value


@pytest.mark.parametrize("text, value", [
    ("1", 1), ("-3", -3), ("0x10", 16), ("1e", "1e"), ("e5", "e5"), ("1.2.3", "1.2.3"), ("'1e-4'", "1e-4"),
    ("true", True), ("null", None), (".inf", float("inf")), ("1_000.5", 1000.5),
])
def test_yaml_other_scalars_are_unchanged(text, value):
    from graphopt.commands.yaml_reader import load_yaml

    got = load_yaml(f"v: {text}")["v"]
    assert type(got) is type(value) and got == value


def test_exponent_without_dot_in_a_recipe(tmp_path, tiny_onnx):
    r = load_recipe(write(tmp_path, BASE + "verify: {tolerance: {max_abs: 1e-4, max_rel: 5e-3, cosine: 0.99999}}\n"
                          "preprocess: {scale: 1e-2}\n"))
    assert r.verify.tolerance.max_abs == 1e-4 and r.verify.tolerance.max_rel == 5e-3
    assert r.preprocess.scale == 1e-2


PLUGIN = """
from dataclasses import dataclass

from graphopt.core.pass_infra import Pass, PassResult, register_pass


@register_pass("recipe_plugin_identity")
@dataclass
class RecipePluginIdentity(Pass):
    '''Changes nothing: a pass only a plugin registers.'''

    times: int = 1

    def run(self, graph):
        return PassResult(False)
"""


def test_plugins_are_loaded_before_the_passes_are_resolved(tmp_path, tiny_onnx, monkeypatch):
    (tmp_path / "recipe_plugin_ok.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    r = load_recipe(write(tmp_path, BASE + "plugins: [recipe_plugin_ok]\n"
                          "passes:\n  - pass: recipe_plugin_identity\n    times: 2\n"))
    assert r.plugins == ("recipe_plugin_ok",)
    assert [p.name for p in r.passes] == ["recipe_plugin_identity"] and r.passes[0].args == {"times": 2}
    assert r.build_passes()[0].times == 2


@pytest.mark.parametrize("module_text, message", [
    (None, "r.yaml: plugins[1]: plugin 'recipe_plugin_missing' failed to load: ModuleNotFoundError: "
           "No module named 'recipe_plugin_missing'"),
    ("raise RuntimeError('no licence found')\n",
     "r.yaml: plugins[1]: plugin 'recipe_plugin_missing' failed to load: RuntimeError: no licence found"),
])
def test_a_plugin_that_fails_to_import_is_one_line(tmp_path, tiny_onnx, monkeypatch, module_text, message):
    (tmp_path / "recipe_plugin_ok.py").write_text(PLUGIN)
    if module_text is not None:
        (tmp_path / "recipe_plugin_missing.py").write_text(module_text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "recipe_plugin_missing", raising=False)
    path = write(tmp_path, BASE + "plugins: [recipe_plugin_ok, recipe_plugin_missing]\n"
                 "passes:\n  - pass: recipe_plugin_identity\n")
    with pytest.raises(UserError) as e:
        load_recipe(path)
    assert str(e.value) == f"{path.parent}/{message}"


def test_plugins_must_be_module_names(tmp_path, tiny_onnx):
    with pytest.raises(UserError, match=r"r\.yaml: plugins: expected list\[str\], got str 'my_pkg.passes'"):
        load_recipe(write(tmp_path, BASE + "plugins: my_pkg.passes\n"))


def test_a_failing_plugin_exits_2_with_one_line(tmp_path, tiny_onnx, capsys):
    code, _, errors = cli(capsys, "apply", write(tmp_path, BASE + "plugins: [recipe_plugin_absent]\n"),
                          "-o", tmp_path / "out")
    assert code == 2
    assert errors == [f"graphopt: error: {tmp_path}/r.yaml: plugins[0]: plugin 'recipe_plugin_absent' failed to load: "
                      "ModuleNotFoundError: No module named 'recipe_plugin_absent'"]
    assert not (tmp_path / "out").exists()


def test_atc_section_defaults_and_cann(tmp_path, tiny_onnx):
    r = load_recipe(write(tmp_path, BASE))
    assert (r.atc.cann, r.atc.precision_mode, r.atc.precision_mode_v2, r.atc.dynamic) == ("8.0", None, None, None)
    r = load_recipe(write(tmp_path, BASE + "atc: {cann: 6.3, precision_mode: force_fp16}\n"))
    assert r.atc.cann == "6.3"  # unquoted: YAML's number, read back as the version
    r = load_recipe(write(tmp_path, BASE + "atc: {cann: \"8.0.RC2\", precision_mode_v2: mixed_float16}\n"))
    assert (r.atc.cann, r.atc.precision_mode_v2) == ("8.0.RC2", "mixed_float16")
    r = load_recipe(write(tmp_path, BASE + "atc: {soc_version: Ascend999, soc_version_unlisted: true}\n"))
    assert r.atc.soc_version == "Ascend999"


def test_atc_dynamic_parses(tmp_path, tiny_onnx):
    r = load_recipe(write(tmp_path, BASE + "atc: {dynamic: {batch_sizes: [1, 2, 4, 8]}}\n"))
    assert (r.atc.dynamic.mode, r.atc.dynamic.values) == ("batch_sizes", (1, 2, 4, 8))
    r = load_recipe(write(tmp_path, BASE + "atc: {batch_sizes: [1, 8], dynamic: {image_sizes: [[224, 224], "
                                           "[448, 448]]}}\n"))
    assert r.atc.dynamic.values == ((224, 224), (448, 448)) and r.atc.batch_sizes == (1, 8)


@pytest.mark.parametrize("atc, message", [
    ("{soc_version: Ascend999}", r"r\.yaml: atc\.soc_version: unknown soc_version 'Ascend999' \(did you mean: .*\); "
                                 r"a SoC newer than graphopt's list: set atc\.soc_version_unlisted: true"),
    ("{soc_version: Ascend310P}", r"atc\.soc_version: unknown soc_version 'Ascend310P' \(did you mean: Ascend310P"),
    ("{cann: eight}", r"r\.yaml: atc\.cann: 'eight' is not a CANN version"),
    ("{precision_mode: force_fp16, precision_mode_v2: fp16}",
     r"r\.yaml: atc\.precision_mode and atc\.precision_mode_v2: give one \(ATC refuses both, E10056"),
    ("{precision_mode_v2: fp32}", r"r\.yaml: atc\.precision_mode_v2: expected 'fp16' \| 'origin'"),
    ("{cann: \"6.3\", precision_mode_v2: fp16}", r"r\.yaml: atc\.precision_mode_v2: CANN 6\.3 has no "
                                                 r"--precision_mode_v2 \(from 7\.0\)"),
    ("{dynamic: {batch_sizes: [1, 2], dims: [[1], [2]]}}",
     r"r\.yaml: atc\.dynamic: give exactly one of batch_sizes, image_sizes, dims, ranges \(got batch_sizes, dims\)"),
    ("{dynamic: {batch: [1, 2]}}", r"r\.yaml: atc\.dynamic\.batch: unknown key \(did you mean: batch_sizes"),
    ("{dynamic: {batch_sizes: [4]}}", r"r\.yaml: atc\.dynamic\.batch_sizes: 1 gear\(s\); ATC takes 2 to 100"),
    ("{batch_sizes: [1, 8], dynamic: {batch_sizes: [1, 8]}}",
     r"r\.yaml: atc\.batch_sizes and atc\.dynamic\.batch_sizes: give one"),
])
def test_atc_mistakes(tmp_path, tiny_onnx, atc, message):
    with pytest.raises(UserError, match=message):
        load_recipe(write(tmp_path, BASE + f"atc: {atc}\n"))


def test_a_misspelt_op_type_in_a_mixlist_is_a_recipe_error(tmp_path, tiny_onnx):
    with pytest.raises(UserError, match=r"r\.yaml: passes\[0\]: op type: 'LayerNrom' is neither an ONNX op type nor "
                                        r"an Ascend op type \(did you mean: LayerNorm"):
        load_recipe(write(tmp_path, BASE + "passes:\n  - pass: mixlist\n    keep_fp32: [LayerNrom]\n"))
