"""Data flows one way (pipeline -> shards -> trainer) and libraries never import apps."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(REPO)} imports {name}")
    return found


def test_shards_library_imports_no_stage_or_app():
    assert _violations("shards", ("pipeline", "trainer", "cluster")) == []


def test_pipeline_does_not_import_trainer_or_cluster():
    assert _violations("pipeline", ("trainer", "cluster")) == []


def test_trainer_does_not_import_pipeline_or_cluster():
    assert _violations("trainer", ("pipeline", "cluster")) == []


def test_required_layout_exists():
    for name in ("pipeline", "shards", "trainer", "cluster", "tests", "bench", "requirements.txt",
                 "pyproject.toml", "Makefile", "README.md", "BENCHMARKS.md", ".ci/run"):
        assert (REPO / name).exists(), name


def test_commands_live_in_cluster_commands_and_no_library_imports_them():
    """The CLI is the app: every command module is in cluster/commands/, registered there, and the
    libraries (pipeline, shards, trainer) keep only their concepts and never import a command."""
    from cluster.cli import COMMANDS

    command_files = sorted(str(p.relative_to(REPO)) for package in ("pipeline", "shards", "trainer", "cluster")
                           for p in (REPO / package).rglob("*.py")
                           if p.name.endswith("_command.py") or p.name in ("command.py", "command_args.py"))
    assert command_files and all(f.startswith("cluster/commands/") for f in command_files), command_files
    # registered commands are cluster's: cluster/commands/ (or the launcher's own submit and demo)
    assert not [m for m, _ in COMMANDS.values() if m.split(".")[0] in ("pipeline", "shards", "trainer")]
    for package in ("pipeline", "shards", "trainer"):
        assert _violations(package, ("cluster.commands",)) == []
    # commands may import libraries and the shared argument helpers, not the launcher's internals
    assert _violations("cluster/commands", ("cluster.cli", "cluster.submit", "cluster.local")) == []


def test_no_private_timm_modules_are_imported():
    """timm's underscore modules (timm.models._manipulate, ...) change without notice: public API only."""
    private = [f for package in ("pipeline", "shards", "trainer", "cluster", "bench")
               for f in _violations(package, ("timm",))
               if any(part.startswith("_") for part in f.rsplit(" imports ", 1)[1].split("."))]
    assert private == []
