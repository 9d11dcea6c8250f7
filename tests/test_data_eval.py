"""graphopt data and graphopt eval: preprocessing, safe CIFAR unpickling, ais_bench's output layouts, the ATC
hand-off, and end to end on real images (foolbox's ImageNet and CIFAR-10 samples) with EfficientNet-Lite0 (real
weights: top-1 equals PyTorch's) and BiT (onnxruntime's outputs equal PyTorch's)."""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shlex
import shutil
import struct
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.ascend.ais_bench import (collect_outputs, find_ais_results, load_summary_json, parse_printed_summary,
                                       read_output_file)
from graphopt.ascend.eval_inputs import accuracy
from graphopt.commands.cli import main
from graphopt.core.datasets import load_cifar_batch, preprocess_image
from graphopt.core.errors import UserError

FIXTURES = Path(__file__).resolve().parent / "data" / "ais_bench"
QUICK = ["--warmup", "0", "--min-iterations", "1", "--min-seconds", "0"]


def foolbox_data() -> Path:
    """foolbox's sample images, found without importing foolbox (its own dependencies are not installed)."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        pytest.fail("the foolbox package (its sample images) is missing: pip install --no-deps foolbox==3.3.4")
    return Path(spec.origin).parent / "data"


def run_cli(*args, capsys=None) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


def tiny_classifier(path: Path, size: int = 16, classes: int = 10) -> Path:
    """Conv 3x3 -> ReLU -> GlobalAveragePool -> Flatten: (N, 3, size, size) -> (N, classes) logits."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((classes, 3, 3, 3)) * 0.5).astype(np.float32), "w")
    b = numpy_helper.from_array((rng.standard_normal(classes) * 0.1).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def tiny_run(tmp_path, capsys):
    """A run directory of the tiny classifier (atc batch sizes 1 and 4) and the recipe that made it."""
    tiny_classifier(tmp_path / "tiny.onnx")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent("""
        name: tiny
        model: {onnx: tiny.onnx}
        input: {name: x, shape: [1, 3, 16, 16]}
        atc: {batch_sizes: [1, 4]}
        """))
    assert run_cli("apply", recipe, "-o", tmp_path / "run", capsys=capsys)[0] == 0
    return tmp_path / "run", recipe


@pytest.fixture
def tiny_data(tmp_path, tiny_run, capsys):
    """Six foolbox ImageNet images preprocessed for the tiny classifier."""
    _, recipe = tiny_run
    code, _, _ = run_cli("data", "folder", foolbox_data(), "-o", tmp_path / "data", "--recipe", recipe, "--glob",
                         "imagenet_*", "--label-from-name", r"_(\d+)\.", "--limit", 6, "--jobs", 1, capsys=capsys)
    assert code == 0
    return tmp_path / "data"


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing


def test_preprocess_matches_torchvision_and_timm():
    import timm.data
    import torch
    from PIL import Image
    from torchvision import transforms as T

    img = Image.open(foolbox_data() / "imagenet_00_243.jpg")
    imagenet = {"resize": [256], "crop": [224, 224], "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225], "scale": 1 / 255}
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])(img).numpy()
    np.testing.assert_allclose(preprocess_image(img, imagenet, 3), ref, atol=1e-5)
    # LV-ViT: bicubic, crop_pct 0.9 -> resize int(224 / 0.9) = 248, as timm's eval transform
    lvvit = {**imagenet, "resize": [248], "interpolation": "bicubic"}
    tf = timm.data.create_transform(input_size=224, crop_pct=0.9, interpolation="bicubic")
    np.testing.assert_allclose(preprocess_image(img, lvvit, 3), tf(img).numpy(), atol=1e-5)
    # EfficientNet-Lite: (pixel - 127) / 128 on 0..255 pixels
    lite = {**imagenet, "mean": [127.0], "std": [128.0], "scale": 1.0}
    pixels = torch.from_numpy(np.asarray(T.CenterCrop(224)(T.Resize(256)(img)), dtype=np.float32)).permute(2, 0, 1)
    np.testing.assert_allclose(preprocess_image(img, lite, 3), ((pixels - 127) / 128).numpy(), atol=1e-6)


def test_recipe_preprocess_section_defaults_and_errors(tmp_path):
    from graphopt.commands.recipe import parse_recipe

    tiny_classifier(tmp_path / "t.onnx", size=128)
    base = {"model": {"onnx": "t.onnx"}, "input": {"name": "x", "shape": [1, 3, 128, 128]}}
    pre = parse_recipe(base, tmp_path / "r.yaml").preprocess
    assert (pre.resize, pre.crop, pre.interpolation, pre.scale) == ((146,), (128, 128), "bilinear", 1 / 255)
    pre = parse_recipe({**base, "preprocess": {"resize": 128, "mean": 0.5, "std": 0.5}}, tmp_path / "r.yaml").preprocess
    assert (pre.resize, pre.crop, pre.mean, pre.std) == ((128,), (128, 128), (0.5,), (0.5,))
    with pytest.raises(UserError, match=r"preprocess.crop: \[224, 224\] differs from the input's height and width"):
        parse_recipe({**base, "preprocess": {"crop": 224}}, tmp_path / "r.yaml")
    with pytest.raises(UserError, match=r"preprocess.interpolaton: unknown key \(did you mean: interpolation\?\)"):
        parse_recipe({**base, "preprocess": {"interpolaton": "bicubic"}}, tmp_path / "r.yaml")


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10's test_batch, unpickled safely


def py2_cifar_batch(data: np.ndarray, labels: list[int], filenames: list[bytes]) -> bytes:
    """A CIFAR-10 python batch as Python 2 wrote it (protocol 2, str as BINSTRING, numpy.core's _reconstruct)."""
    out = bytearray(b"\x80\x02")

    def s(text: bytes) -> None:
        out.extend(b"U" + bytes([len(text)]) + text if len(text) < 256 else b"T" + struct.pack("<I", len(text)) + text)

    def i(v: int) -> None:
        out.extend(b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v))

    out += b"}("
    s(b"batch_label"), s(b"testing batch 1 of 1")
    s(b"labels")
    out += b"]("
    for label in labels:
        i(label)
    out += b"e"
    s(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
    s(b"b")
    out += b"\x87R("
    i(1), i(len(data)), i(data.shape[1])
    out += b"\x86cnumpy\ndtype\n"
    s(b"u1")
    out += b"K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
    s(data.tobytes())
    out += b"tb"
    s(b"filenames")
    out += b"]("
    for f in filenames:
        s(f)
    out += b"eu."
    return bytes(out)


def cifar_pngs_as_batch() -> tuple[np.ndarray, list[int]]:
    from PIL import Image

    pngs = sorted(foolbox_data().glob("cifar10_*.png"), key=lambda p: int(p.name.split("_")[1]))
    data = np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1).reshape(-1) for p in pngs])
    return data.astype(np.uint8), [int(p.stem.split("_")[2]) for p in pngs]


def test_cifar_batch_loads_in_every_pickle_flavour(tmp_path):
    data, labels = cifar_pngs_as_batch()
    assert data.shape == (20, 3072)
    flavours = {
        "py2": py2_cifar_batch(data, labels, [f"img{i}.png".encode() for i in range(len(data))]),
        "py3-protocol2": pickle.dumps({b"data": data, b"labels": labels}, protocol=2),
        "py3-protocol4": pickle.dumps({"data": data, "labels": labels}, protocol=4),
        "py3-protocol5": pickle.dumps({"data": data, "labels": labels}, protocol=5),
    }
    for name, blob in flavours.items():
        (tmp_path / name).write_bytes(blob)
        got, got_labels = load_cifar_batch(tmp_path / name)
        np.testing.assert_array_equal(got, data, err_msg=name)
        assert got_labels == labels, name


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_batch_refuses_code_and_object_arrays(tmp_path):
    marker = tmp_path / "PWNED"
    hostile = {
        "os.system": pickle.dumps({b"data": _RunsCode(marker), b"labels": [1]}, protocol=2),
        "protocol 0 global": b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.",
        "object array": pickle.dumps({"data": np.array([1, "x"], dtype=object), "labels": [1]}, protocol=4),
        "subclass": pickle.dumps({"data": np.ma.masked_array([1, 2]), "labels": [1]}, protocol=2),
    }
    for name, blob in hostile.items():
        (tmp_path / "test_batch").write_bytes(blob)
        with pytest.raises(UserError, match="not a CIFAR-10 python batch .*refused"):
            load_cifar_batch(tmp_path / "test_batch")
        assert not marker.exists(), name
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 5), np.uint8), "labels": [1, 2]}))
    with pytest.raises(UserError, match=r"'data' should be uint8 \[N, 3072\], found uint8 \[2, 5\]"):
        load_cifar_batch(tmp_path / "test_batch")


def test_data_cifar10_reads_the_committed_py2_test_batch(tmp_path, tiny_run, capsys):
    _, recipe = tiny_run  # tests/data/cifar10/test_batch: 2 random images as Python 2 pickled them, labels 3 and 8
    code, stdout, _ = run_cli("data", "cifar10", Path(__file__).parent / "data" / "cifar10", "-o", tmp_path / "d",
                              "--recipe", recipe, "--jobs", 1, capsys=capsys)
    assert code == 0 and "2 .bin files" in stdout
    assert (tmp_path / "d" / "labels.txt").read_text() == "cifar10_00000.bin 3\ncifar10_00001.bin 8\n"
    red = np.fromfile(tmp_path / "d" / "cifar10_00000.bin", dtype=np.float32).reshape(3, 16, 16)[0]
    np.testing.assert_allclose(red, (1 - 0.485) / 0.229, rtol=1e-6)  # image 0's red channel is saturated


# ---------------------------------------------------------------------------------------------------------------
# graphopt data


def test_data_folder_counts_unreadable_and_resumes(tmp_path, tiny_run, capsys):
    _, recipe = tiny_run
    src = tmp_path / "images"
    src.mkdir()
    for p in sorted(foolbox_data().glob("imagenet_0[0-3]_*.jpg")):
        shutil.copy(p, src)
    (src / "imagenet_98_1.jpg").write_bytes(b"not a jpeg")
    (src / "imagenet_99_2.jpg").write_bytes((foolbox_data() / "imagenet_00_243.jpg").read_bytes()[:2000])
    (src / "notes.txt").write_text("ignored: not an image")
    out = tmp_path / "data"
    args = ["data", "folder", src, "-o", out, "--recipe", recipe, "--label-from-name", r"_(\d+)\.", "--jobs", 2]
    code, stdout, stderr = run_cli(*args, capsys=capsys)
    assert code == 0
    assert "4 .bin files (4 new, 0 reused)" in stdout
    assert "skipped 2 unreadable image(s)" in stderr and "imagenet_98_1.jpg" in stderr and "truncated" in stderr
    assert sorted(p.name for p in out.glob("*.bin")) == [f"{p.stem}.bin" for p in sorted(src.glob("imagenet_0*"))]
    labels = (out / "labels.txt").read_text().splitlines()
    assert labels[0] == "imagenet_00_243.bin 243" and len(labels) == 4
    assert all(p.stat().st_size == 3 * 16 * 16 * 4 for p in out.glob("*.bin"))
    meta = json.loads((out / "data.json").read_text())
    assert meta["complete"] and len(meta["skipped_unreadable"]) == 2

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    (out / "imagenet_01_559.bin").write_bytes(b"partial")  # an interrupted write: wrong size, redone
    code, stdout, _ = run_cli(*args, capsys=capsys)
    assert code == 0 and "(1 new, 3 reused)" in stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin") if p.name != "imagenet_01_559.bin"} == \
        {k: v for k, v in mtimes.items() if k != "imagenet_01_559.bin"}

    code, stdout, _ = run_cli(*args, "--limit", 2, capsys=capsys)
    assert code == 0 and "removed 2 .bin files of an earlier run" in stdout and len(list(out.glob("*.bin"))) == 2

    other = tmp_path / "other.yaml"
    other.write_text(recipe.read_text().replace("atc:", "preprocess: {interpolation: bicubic}\natc:"))
    code, _, stderr = run_cli(*[other if a == recipe else a for a in args], capsys=capsys)
    assert code == 2 and "holds data prepared with other settings (differing: preprocess)" in stderr


def test_data_errors_are_one_line(tmp_path, tiny_run, capsys):
    _, recipe = tiny_run
    fb = foolbox_data()
    cases = [
        (["folder", fb, "--glob", "imagenet_*", "--label-from-name", "_(x+)"], "does not match the file name"),
        (["folder", fb, "--glob", "nothing_*"], "no images match 'nothing_*'"),
        (["imagenet", fb, "--glob", "imagenet_*"], "no labels: put ILSVRC2012_validation_ground_truth.txt"),
        (["cifar10", tmp_path / "missing"], "no such file"),
    ]
    for args, message in cases:
        code, _, stderr = run_cli("data", *args, "-o", tmp_path / "d", "--recipe", recipe, capsys=capsys)
        assert code == 2 and message in stderr, (args, stderr)
        assert stderr.count("graphopt: error:") == 1


def test_data_imagenet_layouts(tmp_path, tiny_run, capsys):
    _, recipe = tiny_run
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(foolbox_data().glob("imagenet_0[0-2]_*.jpg")):
        shutil.copy(p, flat / f"ILSVRC2012_val_0000000{p.name[10]}.JPEG")
    (tmp_path / "val_label.txt").write_text("ILSVRC2012_val_00000000.JPEG 243\nILSVRC2012_val_00000001.JPEG 559\n"
                                            "ILSVRC2012_val_00000002.JPEG 438\n")
    assert run_cli("data", "imagenet", flat, "-o", tmp_path / "d1", "--recipe", recipe, capsys=capsys)[0] == 0
    assert (tmp_path / "d1" / "labels.txt").read_text().splitlines()[1] == "ILSVRC2012_val_00000001.bin 559"
    tree = tmp_path / "tree" / "val"
    for wnid, name in (("n01440764", "imagenet_00_243.jpg"), ("n01443537", "imagenet_01_559.jpg")):
        (tree / wnid).mkdir(parents=True)
        shutil.copy(foolbox_data() / name, tree / wnid / f"{wnid}_1.JPEG")
    assert run_cli("data", "imagenet", tree.parent, "-o", tmp_path / "d2", "--recipe", recipe, capsys=capsys)[0] == 0
    assert (tmp_path / "d2" / "labels.txt").read_text() == "n01440764_1.bin 0\nn01443537_1.bin 1\n"


# ---------------------------------------------------------------------------------------------------------------
# ais_bench's outputs, in its real layouts


def test_printed_summaries_every_wording():
    cur = parse_printed_summary((FIXTURES / "printed_current.txt").read_text())
    assert cur["NPU_compute_time"] == {"min": 9.0670000553131104, "max": 9.6, "mean": 9.100000381469727,
                                       "median": 9.09, "percentile(99%)": 9.4}
    assert cur["throughput"] == 1758.2416845 and cur["batchsize"] == 16
    assert cur["H2D_latency"]["mean"] == 0.82 and cur["D2H_latency"]["percentile(99%)"] == 0.11
    old = parse_printed_summary((FIXTURES / "printed_2022_mean.txt").read_text())
    assert old["throughput"] == 1600.0 and old["NPU_compute_time"]["median"] == 4.99
    assert parse_printed_summary((FIXTURES / "printed_2022_plain.txt").read_text())["throughput"] == 769.2307
    multi = parse_printed_summary((FIXTURES / "printed_multi_device.txt").read_text())
    assert multi["summary_throughput"] == 1753.4377
    bench = parse_printed_summary((FIXTURES / "benchmark_x86_64.txt").read_text())
    assert bench["throughput"] == 176.406
    assert bench["benchmark_infer"] == {"throughputRate": 54.8707, "Interface throughputRate": 176.406,
                                        "moduleLatency": 18.2243}
    assert bench["benchmark_e2e"]["throughputRate"] == 33.4423


@pytest.mark.parametrize("layout, dirname, fmt", [("bin_current", "bs2", "bin"), ("npy_current", "bs1", "npy"),
                                                  ("txt_2022", None, "txt")])
def test_output_layouts_postprocess_alike(layout, dirname, fmt):
    from graphopt.core.datasets import read_labels_file

    out = FIXTURES / layout / "out"
    folder, summary_path = find_ais_results(out, dirname)
    assert summary_path is not None and summary_path.name in ("bs2_summary.json", "bs1_summary.json", "sumary.json")
    summary = load_summary_json(summary_path)
    assert "percentile(99%)" in summary["NPU_compute_time"]
    inputs = [Path(f"/elsewhere/img_{i}.bin") for i in range(3)]
    labels = read_labels_file(FIXTURES / "labels.txt")
    for with_summary in (summary, None):  # filesinfo (exact) and the folder listing give the same rows
        rows = collect_outputs(folder, with_summary, inputs, classes=5)
        assert sorted(rows) == ["img_0", "img_1", "img_2"]
        assert [int(rows[f"img_{i}"].argmax()) for i in range(3)] == [1, 3, 0]
        acc = accuracy(rows, labels, ["img_0", "img_1", "img_2"])
        assert (acc["top1_correct"], acc["top5_correct"], acc["missing_outputs"]) == (2, 3, 0)
    assert read_output_file(next(folder.glob(f"*.{fmt}")), 5).shape[1] == 5


# ---------------------------------------------------------------------------------------------------------------
# graphopt eval: backends and the ATC hand-off


def atc_script_commands(run: Path) -> list[list[str]]:
    return [shlex.split(l) for l in (run / "atc.sh").read_text().splitlines() if l.startswith("atc ")]


def test_dry_run_lists_the_atc_sh_commands(tiny_run, tiny_data, capsys, monkeypatch):
    run, _ = tiny_run
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no atc, no ais_bench
    code, stdout, _ = run_cli("eval", run, "--data", tiny_data, "--batch-sizes", "1,4,8", "--dry-run", capsys=capsys)
    assert code == 0
    atc_lines = [l for l in stdout.splitlines() if l.startswith("atc ")]
    assert [shlex.split(l) for l in atc_lines[:2]] == atc_script_commands(run)
    assert "--input_shape=x:8,3,16,16" in atc_lines[2] and "--output=tiny_bs8" in atc_lines[2]
    assert "derived: atc.sh has no batch size 8" in atc_lines[2]
    ais = [l for l in stdout.splitlines() if "ais_bench" in l and l.startswith(("python", "/"))]
    assert len(ais) == 3 and f"--model {run}/tiny_bs4.om --input {tiny_data}" in ais[1]
    assert "atc_jobs.json" in json.loads((run / ".graphopt").read_text())["files"]  # apply's file, replaceable


def test_a_run_without_atc_jobs_is_one_line_saying_to_rerun_apply(tmp_path, tiny_run, tiny_data, capsys,
                                                                    monkeypatch):
    run, _ = tiny_run
    old = tmp_path / "old_run"
    shutil.copytree(run, old)
    (old / "atc_jobs.json").unlink()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    code, _, stderr = run_cli("eval", old, "--data", tiny_data, "--dry-run", capsys=capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert stderr == (f"graphopt: error: {old}: no atc_jobs.json beside atc.sh (an older graphopt wrote this run): "
                      "re-run graphopt apply on its recipe\n")


def test_backend_ais_bench_without_it_is_a_user_error(tiny_run, tiny_data, capsys, monkeypatch):
    run, _ = tiny_run
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("GRAPHOPT_AIS_BENCH", raising=False)
    code, _, stderr = run_cli("eval", run, "--data", tiny_data, "--backend", "ais_bench", capsys=capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.startswith("graphopt: error: --backend ais_bench: ais_bench is not installed")


def test_onnxruntime_backend_writes_ais_bench_layout(tiny_run, tiny_data, capsys, monkeypatch):
    import onnxruntime as ort

    run, _ = tiny_run
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    code, stdout, stderr = run_cli("eval", run, "--data", tiny_data, "--batch-sizes", "1,4", "--outfmt", "TXT",
                                   *QUICK, capsys=capsys)
    assert code == 0
    assert stderr.splitlines()[0].startswith("eval: atc and ais_bench are not installed (Huawei CANN tools): "
                                             "running model.onnx with onnxruntime on the CPU instead")
    assert "| batch size | throughput (img/s) | p50 (ms) | p90 (ms) | p99 (ms) |" in stdout
    res = json.loads((run / "eval" / "eval.json").read_text())
    assert [r["batch_size"] for r in res["rows"]] == [1, 4] and res["backend"] == "onnxruntime"
    assert "excludes reading .bin files, preprocessing and writing outputs" in res["throughput_definition"]
    outputs = run / "eval" / "outputs"
    summary = json.loads((outputs / "bs4_summary.json").read_text())
    assert set(summary) >= {"NPU_compute_time", "H2D_latency", "D2H_latency", "throughput", "filesinfo", "args",
                            "npu_compute_time_list", "pid"}
    files = sorted(tiny_data.glob("*.bin"))
    assert sorted(p.name for p in (outputs / "bs4").iterdir()) == sorted(f"{f.stem}_0.txt" for f in files)
    x = np.stack([np.fromfile(f, dtype=np.float32).reshape(3, 16, 16) for f in files])
    want = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rows = collect_outputs(outputs / "bs4", None, files, classes=10)
    np.testing.assert_allclose(np.stack([rows[f.stem] for f in files]), want, atol=1e-5)  # TXT keeps 6 decimals
    assert (run / "eval" / "throughput.png").read_bytes()[:4] == b"\x89PNG"

    code, stdout, _ = run_cli("eval", "--compare", run, run, capsys=capsys)
    assert code == 0 and "B/A" in stdout and "| 4 |" in stdout


FAKE_ATC = """#!/usr/bin/env bash
# Records how it was called, then "compiles": the .om is a copy of the ONNX model (fake ais_bench runs it).
{ echo "cwd=$PWD"; printf '%s\\n' "$@"; echo "--"; } >> "$FAKE_ATC_LOG"
for a in "$@"; do case "$a" in --output=*) out="${a#--output=}";; --model=*) model="${a#--model=}";; esac; done
cp "$model" "$out.om"
"""

FAKE_AIS_BENCH = '''
"""Fake ais_bench: runs the ".om" (an ONNX copy) with onnxruntime, writes outputs as an older ais_bench did (one
file per batch, named after its first input, no summary JSON) and prints the performance summary."""
import argparse, os, re, time
import numpy as np, onnxruntime as ort
p = argparse.ArgumentParser()
for a in ("--model", "--input", "--output", "--output_dirname", "--outfmt", "--batchsize", "--warmup_count"):
    p.add_argument(a)
a = p.parse_args()
key = lambda s: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\\d+)", s)]
files = sorted((os.path.join(a.input, f) for f in os.listdir(a.input) if f.endswith(".bin")), key=key)
sess = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
shape = [int(a.batchsize), *sess.get_inputs()[0].shape[1:]]
out = os.path.join(a.output, a.output_dirname); os.makedirs(out, exist_ok=True)
times = []
bs = int(a.batchsize)
for i in range(0, len(files), bs):
    group = files[i:i + bs]; group += [group[0]] * (bs - len(group))
    x = np.stack([np.fromfile(f, dtype=np.float32) for f in group]).reshape(shape)
    t = time.perf_counter()
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    times.append(1e3 * (time.perf_counter() - t))
    y.tofile(os.path.join(out, os.path.basename(group[0]).split(".")[0] + "_0.bin"))
t = np.array(times)
print("[INFO] -----------------Performance Summary------------------")
print(f"[INFO] NPU_compute_time (ms): min = {t.min()}, max = {t.max()}, mean = {t.mean()}, "
      f"median = {np.median(t)}, percentile(99%) = {np.percentile(t, 99)}")
print(f"[INFO] throughput 1000*batchsize.mean({bs})/NPU_compute_time.mean({t.mean()}): {1000 * bs / t.mean()}")
print("[INFO] ------------------------------------------------------")
'''


def test_fake_atc_and_ais_bench_run_the_atc_sh_commands(tmp_path, tiny_run, tiny_data, capsys, monkeypatch):
    run, _ = tiny_run
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "atc").write_text(FAKE_ATC)
    (tools / "atc").chmod(0o755)
    (tools / "fake_ais_bench.py").write_text(FAKE_AIS_BENCH)
    monkeypatch.setenv("PATH", f"{tools}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_ATC_LOG", str(tmp_path / "atc.log"))
    monkeypatch.setenv("GRAPHOPT_AIS_BENCH", f"{sys.executable} {tools / 'fake_ais_bench.py'}")
    code, _, stderr = run_cli("eval", run, "--data", tiny_data, "--batch-sizes", "1,4,8", *QUICK, capsys=capsys)
    assert code == 0, stderr
    calls = [c.strip("\n").split("\n") for c in (tmp_path / "atc.log").read_text().split("--\n") if c.strip()]
    assert [c[0] for c in calls] == [f"cwd={run}"] * 3
    assert [["atc", *c[1:]] for c in calls[:2]] == atc_script_commands(run)  # exactly atc.sh's commands
    assert "--input_shape=x:8,3,16,16" in calls[2]
    assert sorted(p.name for p in run.glob("*.om")) == ["tiny_bs1.om", "tiny_bs4.om", "tiny_bs8.om"]
    res = json.loads((run / "eval" / "eval.json").read_text())
    assert res["backend"] == "ais_bench" and res["atc_compiled"]
    # the printed summary has median and p99 but no p90; every input got its row from the batched outputs
    assert all(r["outputs"] == 6 and r["latency_ms"]["p90"] is None and r["throughput"] > 0 for r in res["rows"])
    ais_top1 = [r["top1"] for r in res["rows"]]

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("GRAPHOPT_AIS_BENCH")
    assert run_cli("eval", run, "--data", tiny_data, "--batch-sizes", "1,4,8", "-o", tmp_path / "ort", *QUICK,
                   capsys=capsys)[0] == 0
    ort_res = json.loads((tmp_path / "ort" / "eval.json").read_text())
    assert [r["top1"] for r in ort_res["rows"]] == ais_top1  # one postprocess, both backends

    # What eval's ATC runs made in the run is listed in its marker: applying the recipe again replaces the run whole
    _, recipe = tiny_run
    assert run_cli("apply", recipe, "-o", run, capsys=capsys)[0] == 0
    assert not list(run.glob("*.om")) and not (run / "eval").exists()


# ---------------------------------------------------------------------------------------------------------------
# End to end on real images


def test_efficientnet_lite0_foolbox_imagenet_top1_matches_pytorch(tmp_path, repo, capsys):
    import torch

    from graphopt.models.efficientnet_lite import build_efficientnet_lite0

    recipe = repo / "recipes" / "efficientnet_lite0.yaml"
    data, run = tmp_path / "data", tmp_path / "run"
    assert run_cli("data", "folder", foolbox_data(), "-o", data, "--recipe", recipe, "--glob", "imagenet_*",
                   "--label-from-name", r"_(\d+)\.", capsys=capsys)[0] == 0
    assert run_cli("apply", recipe, "-o", run, capsys=capsys)[0] == 0
    code, stdout, _ = run_cli("eval", run, "--data", data, *QUICK, capsys=capsys)
    assert code == 0
    res = json.loads((run / "eval" / "eval.json").read_text())
    assert [r["batch_size"] for r in res["rows"]] == [1, 4, 8, 16, 32, 64]
    assert all(r["labelled"] == 20 and r["evaluated"] == 20 and r["throughput"] > 0 for r in res["rows"])

    labels = dict(line.split() for line in (data / "labels.txt").read_text().splitlines())
    names = sorted(labels)
    x = torch.from_numpy(np.stack([np.fromfile(data / n, dtype=np.float32).reshape(3, 224, 224) for n in names]))
    with torch.no_grad():
        logits = build_efficientnet_lite0()(x).numpy()
    torch_top1 = sum(int(logits[i].argmax()) == int(labels[n]) for i, n in enumerate(names))
    assert torch_top1 >= 16  # real weights on real images
    assert {r["top1_correct"] for r in res["rows"]} == {torch_top1}
    assert "| 64 |" in stdout and (run / "eval" / "eval.md").is_file() and (run / "eval" / "throughput.png").is_file()


def test_bit_cifar10_test_batch_onnxruntime_equals_pytorch(tmp_path, repo, capsys):
    import torch
    import yaml

    from graphopt.commands.export import get_exporter
    from graphopt.commands.recipe import load_recipe
    from graphopt.core.tolerance import Tolerance
    from graphopt.core.verify import compare_outputs

    # The repository's recipe without its passes and their verification (test_recipes applies those), with the
    # seed's CIFAR-10 preprocessing unless the recipe states its own.
    source = repo / "recipes" / "bit.yaml"
    spec = yaml.safe_load(source.read_text()) if source.is_file() else \
        {"name": "bit", "model": {"exporter": "bit_m_r50x1"}, "input": {"name": "image", "shape": [1, 3, 128, 128]}}
    for key in ("checkpoint", "onnx"):
        if spec["model"].get(key):
            spec["model"][key] = str(source.parent / spec["model"][key])
    spec.update(passes=[], verify={"enabled": False})
    spec.setdefault("preprocess", {"resize": 128, "crop": 128, "mean": 0.5, "std": 0.5})
    recipe = tmp_path / "bit.yaml"
    recipe.write_text(yaml.safe_dump(spec))
    data_arr, labels = cifar_pngs_as_batch()
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        py2_cifar_batch(data_arr, labels, [f"x{i}.png".encode() for i in range(20)]))
    data, run = tmp_path / "data", tmp_path / "run"
    assert run_cli("data", "cifar10", tmp_path, "-o", data, "--recipe", recipe, capsys=capsys)[0] == 0
    # the same images as PNG files give the same .bin files
    assert run_cli("data", "folder", foolbox_data(), "-o", tmp_path / "png", "--recipe", recipe, "--glob",
                   "cifar10_*", "--label-from-name", r"_(\d+)\.", "--jobs", 1, capsys=capsys)[0] == 0
    for i, png in enumerate(sorted((tmp_path / "png").glob("*.bin"), key=lambda p: int(p.name.split("_")[1]))):
        assert (data / f"cifar10_{i:05d}.bin").read_bytes() == png.read_bytes()
    assert (data / "labels.txt").read_text().splitlines()[0] == f"cifar10_00000.bin {labels[0]}"

    assert run_cli("apply", recipe, "-o", run, capsys=capsys)[0] == 0
    assert run_cli("eval", run, "--data", data, "--batch-sizes", "8", "--outfmt", "NPY", *QUICK,
                   capsys=capsys)[0] == 0
    res = json.loads((run / "eval" / "eval.json").read_text())
    assert [r["evaluated"] for r in res["rows"]] == [20]  # 3 batches, the last one padded

    spec = load_recipe(recipe)
    torch.manual_seed(spec.model.seed)
    model = get_exporter("bit_m_r50x1").build(**spec.model.args).eval()
    names = [f"cifar10_{i:05d}" for i in range(20)]
    x = torch.from_numpy(np.stack([np.fromfile(data / f"{n}.bin", dtype=np.float32).reshape(3, 128, 128)
                                   for n in names]))
    with torch.no_grad():
        want = model(x).numpy()
    # onnxruntime's Pad_Fusion would fold the stem's zero Pad into MaxPool (-inf padding): the backend turns it off
    assert res["device"]["disabled_optimizers"] == ["Pad_Fusion"]  # the export's stem is Pad -> MaxPool
    got = np.stack([np.load(run / "eval" / "outputs" / "bs8" / f"{n}_0.npy").reshape(-1) for n in names])
    tol = Tolerance(max_abs=1e-4, cosine=0.99999, top1_agreement=1.0)
    cmp = compare_outputs({"output": want}, {"output": got}, tol)
    assert cmp.passed, cmp.describe()


# ---------------------------------------------------------------------------------------------------------------
# Models with several inputs: one data folder per input


def image_and_vector_classifier(path: Path, classes: int = 5) -> Path:
    """An image (N, 3, 16, 16) and a metadata vector (N, 8): class scores (N, classes) and the argmax (int64)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((3, classes)).astype(np.float32), "w_image"),
             numpy_helper.from_array(rng.standard_normal((8, classes)).astype(np.float32), "w_meta"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "hw")]
    nodes = [helper.make_node("ReduceMean", ["image", "hw"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w_image"], ["a"]),
             helper.make_node("MatMul", ["meta", "w_meta"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "image_and_vector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16]),
         helper.make_tensor_value_info("meta", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def two_input(tmp_path, capsys):
    """A run of the image + vector classifier (atc batch sizes 1 and 4), and DATA/image (7 labelled images
    through graphopt data folder) + DATA/meta (graphopt data npz, named after the images)."""
    from PIL import Image

    image_and_vector_classifier(tmp_path / "iv.onnx")
    recipe = tmp_path / "iv.yaml"
    recipe.write_text("name: iv\nmodel: {onnx: iv.onnx}\ninput: {name: image, shape: [1, 3, 16, 16]}\n"
                      "atc: {batch_sizes: [1, 4]}\n")
    assert run_cli("apply", recipe, "-o", tmp_path / "run", capsys=capsys)[0] == 0
    rng = np.random.default_rng(3)
    images = tmp_path / "images"
    images.mkdir()
    for k in range(7):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(images / f"s{k}_{k % 5}.png")
    data = tmp_path / "data"
    code, _, err = run_cli("data", "folder", images, "-o", data / "image", "--recipe", recipe,
                           "--label-from-name", r"_(\d+)\.", "--jobs", 1, capsys=capsys)
    assert code == 0, err
    np.savez(tmp_path / "meta.npz", meta=rng.standard_normal((7, 8)))  # float64: cast to the model's float32
    code, out, err = run_cli("data", "npz", tmp_path / "meta.npz", "-o", data, "--model", tmp_path / "run",
                             "--names-from", data / "image", capsys=capsys)
    assert code == 0, err
    assert f"wrote {data / 'meta'}/: 7 .bin files for input 'meta', each float32 [8]" in out
    return tmp_path / "run", data


def test_two_input_classifier_eval_with_onnxruntime(two_input, capsys, monkeypatch):
    import onnxruntime as ort

    run, data = two_input
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    code, stdout, stderr = run_cli("eval", run, "--data", data, "--batch-sizes", "1,4", *QUICK, capsys=capsys)
    assert code == 0, stderr
    res = json.loads((run / "eval" / "eval.json").read_text())
    assert [r["batch_size"] for r in res["rows"]] == [1, 4] and res["backend"] == "onnxruntime"
    assert [i["name"] for i in res["model_inputs"]] == ["image", "meta"]
    assert res["scoring"].startswith("top-1/top-5 of output 0 (5 classes)")
    # top-1 as onnxruntime computes it on the same files, item k of every input together
    names = sorted((p.stem for p in (data / "image").glob("*.bin")), key=lambda s: int(s[1:].split("_")[0]))
    image = np.stack([np.fromfile(data / "image" / f"{n}.bin", np.float32).reshape(3, 16, 16) for n in names])
    meta = np.stack([np.fromfile(data / "meta" / f"{n}.bin", np.float32) for n in names])
    scores = ort.InferenceSession(str(run / "model.onnx")).run(["scores"], {"image": image, "meta": meta})[0]
    want = np.mean(scores.argmax(1) == np.array([int(n.split("_")[1]) for n in names]))
    for r in res["rows"]:
        assert r["labelled"] == 7 and r["outputs"] == 7 and r["top1"] == pytest.approx(want) and r["top5"] == 1.0
    assert "| batch size | throughput (items/s) |" in stdout
    summary = json.loads((run / "eval" / "outputs" / "bs4_summary.json").read_text())
    assert summary["filesinfo"]["0"]["infiles"] == [str(data / "image" / f"{names[0]}.bin"),
                                                  str(data / "meta" / f"{names[0]}.bin")]

    # a meta file of the wrong size: one line naming the file and the input
    (data / "meta" / f"{names[2]}.bin").write_bytes(b"\0" * 12)
    code, _, stderr = run_cli("eval", run, "--data", data, "--batch-sizes", "1", *QUICK, capsys=capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.startswith(f"graphopt: error: --data {data / 'meta' / names[2]}.bin: 12 bytes, but one item of "
                             "input 'meta' (float32 [8] per item) is 32 bytes")
    (data / "meta" / f"{names[2]}.bin").unlink()
    code, _, stderr = run_cli("eval", run, "--data", data, "--batch-sizes", "1", *QUICK, capsys=capsys)
    assert code == 2 and f"no {names[2]}.bin for input 'meta'" in stderr and stderr.count("\n") == 1


def test_two_input_dry_run_names_both_folders_in_input_order(two_input, capsys, monkeypatch):
    run, data = two_input
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("GRAPHOPT_AIS_BENCH", raising=False)
    code, stdout, _ = run_cli("eval", run, "--data", data, "--batch-sizes", "1,8", "--dry-run", capsys=capsys)
    assert code == 0
    atc_lines = [shlex.split(l.split("  #")[0]) for l in stdout.splitlines() if l.startswith("atc ")]
    assert "--input_shape=image:1,3,16,16;meta:1,8" in atc_lines[0]
    assert "--input_shape=image:8,3,16,16;meta:8,8" in atc_lines[1]  # derived: the batch in every input
    ais = [shlex.split(l) for l in stdout.splitlines() if "ais_bench" in l and l.startswith(("python", "/"))]
    assert len(ais) == 2
    for argv in ais:
        assert argv[argv.index("--input") + 1] == f"{data / 'image'},{data / 'meta'}"


FAKE_AIS_BENCH_MULTI = '''
"""Fake ais_bench for several inputs: --input takes one folder per model input (comma-separated, input order),
pairs the k-th file (natural order) of every folder, records its argv, writes one output file per batch."""
import argparse, json, os, re, sys, time
import numpy as np, onnxruntime as ort
with open(os.environ["FAKE_AIS_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
p = argparse.ArgumentParser()
for a in ("--model", "--input", "--output", "--output_dirname", "--outfmt", "--batchsize", "--warmup_count"):
    p.add_argument(a)
a = p.parse_args()
key = lambda s: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\\d+)", s)]
sess = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
ins = sess.get_inputs()
dirs = a.input.split(",")
assert len(dirs) == len(ins), "one folder per model input"
lists = [sorted((os.path.join(d, f) for f in os.listdir(d) if f.endswith(".bin")), key=key) for d in dirs]
types = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
out = os.path.join(a.output, a.output_dirname); os.makedirs(out, exist_ok=True)
bs = int(a.batchsize); times = []
for i in range(0, len(lists[0]), bs):
    feed = {}
    for inp, files in zip(ins, lists):
        group = files[i:i + bs]; group += [group[0]] * (bs - len(group))
        feed[inp.name] = np.stack([np.fromfile(f, dtype=types[inp.type]) for f in group]).reshape(
            [bs, *inp.shape[1:]])
    t = time.perf_counter()
    y = sess.run(None, feed)[0]
    times.append(1e3 * (time.perf_counter() - t))
    y.tofile(os.path.join(out, os.path.basename(lists[0][i]).split(".")[0] + "_0.bin"))
t = np.array(times)
print(f"[INFO] NPU_compute_time (ms): min = {t.min()}, max = {t.max()}, mean = {t.mean()}, "
      f"median = {np.median(t)}, percentile(99%) = {np.percentile(t, 99)}")
print(f"[INFO] throughput 1000*batchsize.mean({bs})/NPU_compute_time.mean({t.mean()}): {1000 * bs / t.mean()}")
'''


def test_fake_atc_and_ais_bench_take_one_folder_per_input(tmp_path, two_input, capsys, monkeypatch):
    run, data = two_input
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "atc").write_text(FAKE_ATC)
    (tools / "atc").chmod(0o755)
    (tools / "fake_ais_bench.py").write_text(FAKE_AIS_BENCH_MULTI)
    monkeypatch.setenv("PATH", f"{tools}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_ATC_LOG", str(tmp_path / "atc.log"))
    monkeypatch.setenv("FAKE_AIS_LOG", str(tmp_path / "ais.log"))
    monkeypatch.setenv("GRAPHOPT_AIS_BENCH", f"{sys.executable} {tools / 'fake_ais_bench.py'}")
    code, _, stderr = run_cli("eval", run, "--data", data, "--batch-sizes", "1,4,8", *QUICK, capsys=capsys)
    assert code == 0, stderr
    calls = [json.loads(l) for l in (tmp_path / "ais.log").read_text().splitlines()]
    assert len(calls) == 3
    for argv in calls:
        assert argv[argv.index("--input") + 1] == f"{data / 'image'},{data / 'meta'}"
    assert "--input_shape=image:8,3,16,16;meta:8,8" in (tmp_path / "atc.log").read_text().split("--\n")[2]
    res = json.loads((run / "eval" / "eval.json").read_text())
    assert res["backend"] == "ais_bench" and all(r["outputs"] == 7 for r in res["rows"])
    ais_top1 = [r["top1"] for r in res["rows"]]
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("GRAPHOPT_AIS_BENCH")
    assert run_cli("eval", run, "--data", data, "--batch-sizes", "1,4,8", "-o", tmp_path / "ort", *QUICK,
                   capsys=capsys)[0] == 0
    assert [r["top1"] for r in json.loads((tmp_path / "ort" / "eval.json").read_text())["rows"]] == ais_top1

    # --limit links the first N files of every input into one folder per input, still in input order
    monkeypatch.setenv("PATH", f"{tools}:/usr/bin:/bin")
    monkeypatch.setenv("GRAPHOPT_AIS_BENCH", f"{sys.executable} {tools / 'fake_ais_bench.py'}")
    (tmp_path / "ais.log").unlink()
    code, _, stderr = run_cli("eval", run, "--data", data, "--batch-sizes", "4", "--limit", 5, "-o",
                              tmp_path / "lim", *QUICK, capsys=capsys)
    assert code == 0, stderr
    argv = json.loads((tmp_path / "ais.log").read_text())
    linked = tmp_path / "lim" / "outputs" / "inputs"
    assert argv[argv.index("--input") + 1].split(",")[0].endswith("/outputs/inputs/image")
    assert sorted(p.name for p in (linked / "meta").iterdir()) == sorted(p.name for p in (linked / "image").iterdir())
    assert json.loads((tmp_path / "lim" / "eval.json").read_text())["rows"][0]["outputs"] == 5


def text_encoder(path: Path, vocab: int = 30) -> Path:
    """token ids and an attention mask (int64 [batch, seq]) -> masked embeddings (float [batch, seq, 4])."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, 4)).astype(np.float32), "embedding"),
             numpy_helper.from_array(np.array([-1], np.int64), "last")]
    nodes = [helper.make_node("Gather", ["embedding", "input_ids"], ["emb"]),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
             helper.make_node("Mul", ["emb", "mask3"], ["hidden"])]
    graph = helper.make_graph(
        nodes, "text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_int64_text_model_is_evaluated_for_throughput_only(tmp_path, capsys, monkeypatch):
    text_encoder(tmp_path / "text.onnx")
    recipe = tmp_path / "text.yaml"
    recipe.write_text("name: text\nmodel: {onnx: text.onnx}\ninputs:\n  - {name: input_ids, shape: [1, 12]}\n"
                      "atc: {batch_sizes: [1, 2]}\n")
    assert run_cli("apply", recipe, "-o", tmp_path / "run", capsys=capsys)[0] == 0
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 30, (5, 12)).astype(np.int32)  # a tokenizer's int32: cast to the model's int64
    mask = (np.arange(12) < rng.integers(4, 13, (5, 1))).astype(np.int64)
    np.savez(tmp_path / "tok.npz", input_ids=ids, attention_mask=mask, labels=np.arange(5))
    code, out, err = run_cli("data", "npz", tmp_path / "tok.npz", "-o", tmp_path / "data", "--model",
                             tmp_path / "run", capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "data" / "input_ids").glob("*.bin"))[0] == "item_000000.bin"
    assert (tmp_path / "data" / "input_ids" / "item_000000.bin").stat().st_size == 12 * 8
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    code, stdout, err = run_cli("eval", tmp_path / "run", "--data", tmp_path / "data", "--batch-sizes", "1,2",
                                *QUICK, capsys=capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert res["scoring"].startswith("throughput only: the model has no class-score output")
    assert all(r["top1"] is None and r["throughput"] > 0 and r["outputs"] == 5 for r in res["rows"])
    assert "throughput only" in stdout and "| 2 |" in stdout
    hidden = np.fromfile(tmp_path / "run" / "eval" / "outputs" / "bs2" / "item_000003_0.bin", np.float32)
    assert hidden.size == 12 * 4 and np.all(hidden.reshape(12, 4)[mask[3] == 0] == 0)

    # an npz array of the wrong dtype values or item shape: one line naming the array
    np.savez(tmp_path / "bad.npz", input_ids=np.full((2, 12), 0.5), attention_mask=mask[:2])
    code, _, err = run_cli("data", "npz", tmp_path / "bad.npz", "-o", tmp_path / "bad", "--model", tmp_path / "run",
                           capsys=capsys)
    assert code == 2 and "array 'input_ids' is float64 with values that int64 cannot hold" in err


# ---------------------------------------------------------------------------------------------------------------
# Dynamic shapes: one row per profile


def dynamic_run(tmp_path, capsys, atc: str, hw: tuple = (16, 16)) -> Path:
    """The tiny classifier with a symbolic batch (and H, W when ``hw`` is symbolic), applied with ``atc``."""
    path = tiny_classifier(tmp_path / "dyn.onnx")
    model = onnx.load(path)
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], hw):
        if isinstance(value, str):
            dim.dim_param = value
    onnx.save(model, path)
    recipe = tmp_path / "dyn.yaml"
    recipe.write_text(f"name: dyn\nmodel: {{onnx: dyn.onnx}}\ninput: {{name: x, shape: [1, 3, 16, 16]}}\natc: {atc}\n")
    assert run_cli("apply", recipe, "-o", tmp_path / "dyn", capsys=capsys)[0] == 0
    return tmp_path / "dyn"


def test_dynamic_batch_eval_runs_each_gear(tmp_path, tiny_data, capsys, monkeypatch):
    run = dynamic_run(tmp_path, capsys, "{dynamic: {batch_sizes: [1, 4]}}")
    assert atc_script_commands(run) == [[
        "atc", "--framework=5", "--model=model.onnx", "--output=dyn_dynbatch", "--input_format=NCHW",
        "--input_shape=x:-1,3,16,16", "--dynamic_batch_size=1,4", "--soc_version=Ascend310P3", "--log=error"]]
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    code, stdout, _ = run_cli("eval", run, "--data", tiny_data, "--dry-run", capsys=capsys)
    ais = [l for l in stdout.splitlines() if "ais_bench" in l and l.startswith(("python", "/"))]
    assert code == 0 and [l.split(" --output_dirname ")[1] for l in ais] == [
        "bs1 --outfmt BIN --batchsize 1 --warmup_count 3 --dymBatch 1",
        "bs4 --outfmt BIN --batchsize 4 --warmup_count 3 --dymBatch 4"]
    assert all(f"--model {run}/dyn_dynbatch.om" in l for l in ais)
    code, stdout, _ = run_cli("eval", run, "--data", tiny_data, *QUICK, capsys=capsys)
    assert code == 0 and "| 4 (bs4) |" in stdout
    rows = json.loads((run / "eval" / "eval.json").read_text())["rows"]
    assert [(r["profile"], r["batch_size"], r["items"]) for r in rows] == [("bs1", 1, "the data"),
                                                                          ("bs4", 4, "the data")]
    assert rows[0]["top1"] == rows[1]["top1"] is not None and rows[0]["shapes"] == {"x": [1, 3, 16, 16]}


def test_dynamic_ranges_give_ais_bench_each_outputs_size(tmp_path, tiny_data, capsys, monkeypatch):
    run = dynamic_run(tmp_path, capsys, "{dynamic: {ranges: [[1, 4]]}}")
    assert atc_script_commands(run)[0][3:6] == ["--output=dyn_dynshape", "--input_format=NCHW",
                                                "--input_shape=x:1~4,3,16,16"]
    classes = onnx.load(run / "model.onnx").graph.output[0].type.tensor_type.shape.dim[1].dim_value
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    code, stdout, err = run_cli("eval", run, "--data", tiny_data, "--dry-run", capsys=capsys)
    assert code == 0, err
    ais = [l for l in stdout.splitlines() if "ais_bench" in l and l.startswith(("python", "/"))]
    # ais_bench cannot size a shape-range model's outputs: each profile gives them, in bytes (float32 scores)
    assert [l.split(" --warmup_count 3 ")[1] for l in ais] == [
        f"--dymShape x:1,3,16,16 --outputSize {1 * classes * 4}",
        f"--dymShape x:4,3,16,16 --outputSize {4 * classes * 4}"]


def test_dynamic_image_sizes_eval_runs_each_profiles_shapes(tmp_path, tiny_data, capsys, monkeypatch):
    run = dynamic_run(tmp_path, capsys, "{batch_sizes: [2], dynamic: {image_sizes: [[16, 16], [32, 24]]}}",
                      hw=("H", "W"))
    assert atc_script_commands(run)[0][3:7] == ["--output=dyn_bs2_dynhw", "--input_format=NCHW",
                                                "--input_shape=x:2,3,-1,-1", "--dynamic_image_size=16,16;32,24"]
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    code, _, stderr = run_cli("eval", run, "--data", tiny_data, *QUICK, capsys=capsys)
    assert code == 0, stderr
    rows = json.loads((run / "eval" / "eval.json").read_text())["rows"]
    assert [(r["profile"], r["shapes"]) for r in rows] == [("bs2_16x16", {"x": [2, 3, 16, 16]}),
                                                           ("bs2_32x24", {"x": [2, 3, 32, 24]})]
    assert rows[0]["items"] == "the data" and rows[0]["top1"] is not None
    # the data's items are 16x16: the 32x24 profile runs seeded items of its shape, for throughput
    assert rows[1]["items"].startswith("2 seeded random item(s)") and rows[1]["top1"] is None
    assert rows[1]["throughput"] > 0
    summary = json.loads((run / "eval" / "outputs" / "bs2_32x24_summary.json").read_text())
    assert summary["graphopt"]["dataset_calls"] == 1


def test_dynamic_image_sizes_need_a_symbolic_height_and_width(tmp_path, capsys):
    path = tiny_classifier(tmp_path / "dyn.onnx")
    recipe = tmp_path / "dyn.yaml"
    recipe.write_text("name: dyn\nmodel: {onnx: dyn.onnx}\ninput: {name: x, shape: [1, 3, 16, 16]}\n"
                      "atc: {dynamic: {image_sizes: [[16, 16], [32, 32]]}}\n")
    code, _, stderr = run_cli("apply", recipe, "-o", tmp_path / "dyn", capsys=capsys)
    assert code == 2 and path.is_file()
    assert stderr.strip().endswith("atc.dynamic.image_sizes: input 'x' dim 2 (H) is fixed to 16 in the model; "
                                   "dynamic image sizes need a symbolic height and width")


def test_a_kept_type_the_graph_lacks_is_reported_not_refused(tmp_path, capsys):
    tiny_classifier(tmp_path / "tiny.onnx")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny\nmodel: {onnx: tiny.onnx}\ninput: {name: x, shape: [1, 3, 16, 16]}\n"
                      "passes:\n  - pass: mixlist\n    keep_fp32: [LayerNorm, Conv]\n")
    code, _, stderr = run_cli("apply", recipe, "-o", tmp_path / "run", capsys=capsys)
    assert code == 0
    assert ("warning: LayerNorm is in a keep list of the ATC configs but no op of the graph maps to it (kept: ATC "
            "may form it by fusion)") in stderr.splitlines()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["configs_absent_types"] == ["LayerNorm"]
    assert "The ATC configs keep `LayerNorm`, which no op of the graph maps to" in (
        tmp_path / "run" / "report.md").read_text()
    assert json.loads((tmp_path / "run" / "ops_info.json").read_text()) == {
        "black-list": {"to-add": ["LayerNorm", "Conv2D"]}}


def test_compare_pairs_the_rows_of_dynamic_runs_by_profile():
    from graphopt.commands.evaluate import compare_markdown

    def run(name, speeds):
        rows = [{"batch_size": 2, "profile": label, "throughput": v, "latency_ms": {"p50": 1.0}, "top1": None}
                for label, v in speeds.items()]
        return {"name": name, "run": f"runs/{name}", "backend": "onnxruntime", "inputs": "seeded", "data": "d",
                "rows": rows}

    table = compare_markdown(run("a", {"bs2_16x16": 100.0, "bs2_32x24": 50.0}),
                             run("b", {"bs2_16x16": 200.0, "bs2_32x24": 25.0}))
    lines = [l for l in table.splitlines() if l.startswith("| 2 (")]
    assert [l.split(" | ")[:4] for l in lines] == [["| 2 (bs2_16x16)", "100.0", "200.0", "2.00x"],
                                                   ["| 2 (bs2_32x24)", "50.0", "25.0", "0.50x"]]
