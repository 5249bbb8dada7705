import json
import subprocess
import sys

import pytest

from eqscale.cli import main


def test_info_command(capsys):
    assert main(["info"]) == 0
    assert "eqscale" in capsys.readouterr().out


def test_help_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "eqscale", "--help"], capture_output=True, text=True, check=True)
    assert "bench" in result.stdout and "info" in result.stdout


def test_unknown_suite_is_rejected():
    from eqscale.benchmarking import run_suites

    with pytest.raises(ValueError, match="unknown benchmark suite"):
        run_suites(["nonexistent"])


def test_bench_quick_writes_rows(tmp_path, monkeypatch, cpu_extension):
    pytest.importorskip("e3nn")
    from eqscale.benchmarking import spherical_harmonics as suite

    # A tiny but real run: the suite's own cases, shrunk so the test stays fast.
    monkeypatch.setattr(suite, "LMAXES", (2,))
    monkeypatch.setattr(suite, "STEPS", ("forward",))
    out = tmp_path / "rows.json"
    assert main(["bench", "--quick", "--suites", "spherical_harmonics", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert result["complete"] and result["command"].startswith("eqscale bench --quick")
    assert [(row["backend"], row["anchor"], row["step"]) for row in rows] == [("eqscale-cpu", "e3nn", "forward")]
    assert rows[0]["speedup"] > 0 and rows[0]["gflops"] > 0
