"""Export once: the cache key, reuse, and safe checkpoint loading."""
from __future__ import annotations

import torch

import pytest

from graphopt.core.errors import UserError
from graphopt.commands.export import Exporter, export_cached, load_checkpoint, register_exporter


class _Tiny(torch.nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 4 * 4, width)

    def forward(self, x):
        return self.fc(x.flatten(1))


register_exporter(Exporter(name="test_tiny", build=lambda width=4: _Tiny(width), input_name="x",
                           output_names=("y",), opset=13, input_size=(3, 4, 4)))


def test_second_export_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE", str(tmp_path / "cache"))
    first, cached1 = export_cached("test_tiny")
    stamp = first.stat().st_mtime_ns
    second, cached2 = export_cached("test_tiny")
    assert (cached1, cached2) == (False, True) and first == second and second.stat().st_mtime_ns == stamp
    other, cached3 = export_cached("test_tiny", {"width": 5})
    assert other != first and not cached3


def test_checkpoint_content_is_part_of_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "w.pth"
    torch.save(_Tiny().state_dict(), ckpt)
    a, _ = export_cached("test_tiny", checkpoint=ckpt)
    torch.save({k: v + 1 for k, v in _Tiny().state_dict().items()}, ckpt)
    b, cached = export_cached("test_tiny", checkpoint=ckpt)
    assert a != b and not cached


def test_whole_pickled_model_is_refused(tmp_path):
    path = tmp_path / "bit.pth"
    torch.save(_Tiny(), path)  # a whole module, like the BiT seed's bit.pth
    with pytest.raises(UserError, match="will not unpickle.*state_dict"):
        load_checkpoint(path)


def test_mismatched_keys_are_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.zeros(4, 48), "head.bias": torch.zeros(4)}, path)
    with pytest.raises(UserError, match=r"missing fc\.bias; unexpected head\.bias"):
        export_cached("test_tiny", checkpoint=path)


def test_training_wrappers_are_unwrapped(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"module.fc.weight": torch.ones(1)}, "epoch": 3}, path)
    assert list(load_checkpoint(path)) == ["fc.weight"]


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_builtin_table_matches_what_the_model_modules_register():
    import importlib
    import pkgutil

    import graphopt.models as models
    from graphopt.commands.export import _EXPORTERS

    for mod in pkgutil.iter_modules(models.__path__):
        importlib.import_module(f"graphopt.models.{mod.name}")
    registered = {name: e.build.__module__.rsplit(".", 1)[-1] for name, e in _EXPORTERS.items()
                  if e.build.__module__.startswith("graphopt.models.")}
    assert registered == {name: module for name, (module, _) in models.EXPORTERS.items()}


def test_cache_hit_needs_no_torch_import(tmp_path):
    import subprocess
    import sys

    code = ("import sys, os; os.environ['GRAPHOPT_CACHE'] = sys.argv[1]\n"
            "from graphopt.commands.export import export_cached, cache_key\n"
            "key = cache_key('lvvit_s', {}, None, 13, (3, 224, 224), 0)\n"
            "open(os.path.join(sys.argv[1], f'lvvit_s-{key}.onnx'), 'wb').write(b'x')\n"
            "path, cached = export_cached('lvvit_s', {}, None, 13, (3, 224, 224))\n"
            "print(cached, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["True", "False"], proc.stderr
