"""``lstmkit demo`` runs end to end (with a tiny budget) and writes its report."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lstmkit.cli import main


def test_demo_runs_and_writes_report(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--budget", "64", "--out", str(out),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    for text in ("RNN (tanh)", "LSTM forget_gate=False", "Adding problem, T = 50",
                 "Gradient of the prediction", "Report:"):
        assert text in result.output
    assert (out / "report.md").exists()
    assert (out / "gradient_flow.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "learning_curves.png").exists()
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["budget"] == 64
    assert set(data["results"]) == {"RNN (tanh)", "LSTM"}
    # the carousel at initialisation: the no-forget LSTM keeps far more gradient than the RNN
    table = (out / "report.md").read_text()
    assert "||dL/dx_0|| at initialisation" in table


def test_demo_budget_from_environment_and_no_clobbering(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTMKIT_DEMO_BUDGET", "32")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    first = runner.invoke(main, ["demo", "--no-progress"])
    second = runner.invoke(main, ["demo", "--no-progress"])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    reports = sorted((tmp_path / "lstmkit-demo").rglob("report.md"))
    assert len(reports) == 2
    data = json.loads((reports[0].parent / "results.json").read_text())
    assert data["config"]["budget"] == 32
