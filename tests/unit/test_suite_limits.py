"""The suite bounds every test's time, so a hang fails fast with a stack."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_has_a_time_limit(pytestconfig):
    assert 0 < float(pytestconfig.getini("timeout")) <= 300
    assert pytestconfig.pluginmanager.hasplugin("timeout")


def test_no_test_asks_for_more_than_ten_minutes():
    """A longer limit would let one hang eat most of CI's 90 minutes."""
    for path in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("mark.timeout") and node.args:
                assert ast.literal_eval(node.args[0]) <= 600, f"{path.name}: {ast.unparse(node)}"
