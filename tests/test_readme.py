"""The README's "Writing a pass" shows the real example files verbatim, and its CLI table the real commands."""
from __future__ import annotations

from graphopt.commands.cli import build_parser


def test_readme_embeds_the_example_files_verbatim(repo):
    readme = (repo / "README.md").read_text()
    for name in ("examples/drop_identity.py", "examples/test_drop_identity.py", "examples/fuse_leaky_relu.py",
                 "examples/test_fuse_leaky_relu.py"):
        assert "```python\n" + (repo / name).read_text() + "```" in readme, f"README is out of date with {name}"


def test_readme_documents_every_command(repo):
    readme = (repo / "README.md").read_text()
    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    for command in commands:
        assert f"`graphopt {command}" in readme, f"README does not document `graphopt {command}`"


def test_readme_lists_every_built_in_pass(repo):
    from graphopt.core.pass_infra import all_passes

    readme = (repo / "README.md").read_text()
    for name, cls in all_passes().items():
        if cls.__module__.startswith("graphopt.passes."):
            assert f"| `{name}` |" in readme, f"README's pass table lacks {name}"
