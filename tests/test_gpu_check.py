"""bench/gpu_check.py runs end to end on the CPU (`--cpu-smoke`: the tiny model, small shapes), so the script taken
to an accelerator is one that works: every figure it reports is there and plausible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_on_the_cpu_and_reports_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu-smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["platform"] == "cpu" and result["shapes"]["size"] == "tiny"
    assert [row["batch"] for row in result["decode"]] == [2, 4]
    for row in result["decode"]:
        assert row["decode_tokens_per_s"] > 0 and row["bytes_per_step_gb"] > 0
        assert 0 < row["roofline_fraction_measured_copy"] and 0 < row["roofline_fraction_datasheet"]
    grpo = result["grpo"]
    assert grpo["finite"] == 1.0 and grpo["loss"] == grpo["loss"]            # a real, finite update
    assert grpo["step_s"] == pytest.approx(grpo["rollout_s"] + grpo["reference_s"] + grpo["update_s"])
    assert 0 < grpo["update_mfu"] < 1 and 0 < grpo["reference_mfu"] < 1
    assert result["memory"]["peak_gb"][0] > 0
    assert "update MFU" in proc.stdout and "decode batch   4" in proc.stdout
