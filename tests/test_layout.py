"""The bounded contexts stay apart: agent and central never import each other."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("agent", {"central", "devstack"}),
        ("central", {"agent", "devstack"}),
        ("shared", {"agent", "central", "devstack"}),
    ],
)
def test_contexts_do_not_import_each_other(package: str, forbidden: set[str]) -> None:
    imports = imported_packages(package)
    assert imports, f"no imports found in {package}: the scan is broken"
    assert not imports & forbidden, f"{package} imports {imports & forbidden}"


def test_scan_sees_shared_imports() -> None:
    # Guards the test above against silently scanning nothing.
    assert "shared" in imported_packages("agent")
    assert "shared" in imported_packages("central")
