"""Tests for mesrgan.training.reporting: console progress (plain and live bar), metrics.jsonl trimming."""
import io
import json

import pytest

from mesrgan.training import reporting as R
from mesrgan.training.config import STAGES


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(R.time, "perf_counter", c)
    return c


def test_plain_lines_from_the_first_step_then_at_log_points_and_at_least_every_30_s(clock):
    out = io.StringIO()
    con = R.Console(stream=out, tty=False)
    asked = []

    def losses():
        asked.append(1)
        return {"l_pix": 0.25}

    con.start_stage("psnr", 10, 1010)  # resumed at iteration 10
    clock.t += 2.0
    con.step(11, losses)  # the first step of this invocation: shown
    clock.t += 2.0
    con.step(12, losses)  # nothing due: not shown, and its losses not read (no GPU wait)
    con.step(20, {"l_pix": 0.125}, force=True)  # a log point
    clock.t += R.PLAIN_EVERY_S + 1
    con.step(21, losses)  # silent for too long
    lines = out.getvalue().splitlines()
    assert len(asked) == 2
    assert lines[0] == "[psnr] 11/1010 l_pix 0.25 | 0.50 it/s | ETA 33m18s"  # 999 left at 0.5 it/s
    assert lines[1].startswith("[psnr] 20/1010 l_pix 0.125 | 2.50 it/s | ETA 6m36s")
    assert lines[2].startswith("[psnr] 21/1010 l_pix 0.25 |") and len(lines) == 3


def test_live_bar_on_a_terminal_shows_iteration_rate_eta_and_losses(clock):
    out = io.StringIO()
    con = R.Console(stream=out, tty=True)
    con.start_stage("gan", 0, 50)
    for it in range(1, 6):
        clock.t += 0.5
        con.step(it, {"l_pix": 0.5, "l_d": 1.5, "d_real": 0.25})
    con.info("[gan] 5 validation: PSNR-Y 20.00 dB")  # above the bar, not through it
    con.end_stage()
    text = out.getvalue()
    assert "[gan]" in text and "5/50" in text and "it/s" in text and "l_pix 0.5 l_d 1.5" in text
    assert "d_real" not in text and "<" in text  # tqdm's elapsed<remaining
    assert "[gan] 5 validation: PSNR-Y 20.00 dB\n" in text
    con.info("after the bar")
    assert out.getvalue().endswith("after the bar\n")


def test_disabled_console_prints_nothing():
    out = io.StringIO()
    con = R.Console(enabled=False, stream=out, tty=True)
    con.info("x")
    con.start_stage("psnr", 0, 3)
    con.step(1, lambda: pytest.fail("losses read on a silent process"))
    con.end_stage()
    assert out.getvalue() == ""


def test_format_duration():
    assert R.format_duration(65) == "1m05s" and R.format_duration(3 * 3600 + 120) == "3h02m"
    assert R.format_duration(float("inf")) == "?"


def _write(path, records, torn=None):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        if torn:
            f.write(torn)


def test_metrics_trim_keeps_what_the_checkpoint_has_seen(tmp_path):
    path = tmp_path / "metrics.jsonl"
    psnr = [{"stage": "psnr", "iteration": i, "l_pix": 1.0 / i} for i in range(1, 7)]
    val = {"stage": "psnr", "iteration": 6, "val": True, "val_psnr": 20.5}
    gan = [{"stage": "gan", "iteration": i, "l_pix": 0.5} for i in range(1, 4)]
    _write(path, psnr + [val] + gan, torn='{"stage": "gan", "itera')  # a line cut by kill -9
    log = R.MetricsLog(str(path))
    assert log.trim(STAGES, "gan", 2) == 2  # gan 3 and the torn line
    assert [json.loads(x) for x in path.read_text().splitlines()] == psnr + [val] + gan[:2]
    assert log.trim(STAGES, "gan", 0) == 2
    assert log.trim(STAGES, "psnr", 4) == 3  # psnr 5, 6 and its validation
    assert [json.loads(x) for x in path.read_text().splitlines()] == psnr[:4]
    assert log.trim(STAGES, "psnr", 4) == 0
    log.append({"stage": "psnr", "iteration": 5})
    assert json.loads(path.read_text().splitlines()[-1]) == {"stage": "psnr", "iteration": 5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_metrics_trim_without_a_file(tmp_path):
    assert R.MetricsLog(str(tmp_path / "none.jsonl")).trim(STAGES, "psnr", 0) == 0
