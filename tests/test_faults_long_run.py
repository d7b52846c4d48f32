"""A 2,000-step run keeps its host memory and step time flat (benchmarks/long_run_flat.py)."""

import pytest

from conftest import load_module


long_run_flat = load_module("benchmarks/long_run_flat.py", "long_run_flat")


def test_drift_flags_growth():
  """The comparison itself: a leak of 100 MiB or a 30% slowdown fails, noise inside the limits passes."""
  def rows(rss_late, time_late):
    return [{"step": s, "perf/host_rss_mb": 500.0 if s <= 1000 else rss_late,
             "perf/step_time_s": 0.010 if s <= 1000 else time_late} for s in range(50, 2001, 50)]
  flat = long_run_flat.drifts(rows(520.0, 0.011), 200, 2000, 0.05, 50.0, 0.15)
  assert [d.flat for d in flat] == [True, True, True, True]
  leaking = long_run_flat.drifts(rows(600.0, 0.010), 200, 2000, 0.05, 50.0, 0.15)
  assert [d.flat for d in leaking] == [False, False, True, True] and leaking[0].ratio == pytest.approx(1.2)
  slowing = long_run_flat.drifts(rows(500.0, 0.013), 200, 2000, 0.05, 50.0, 0.15)
  assert [d.flat for d in slowing] == [True, True, False, True]
  # A few rows stretched by another job: the median moves, the fastest quarter does not.
  noisy = rows(500.0, 0.010)
  for row in noisy[-5:]:  # five of the last nine
    row["perf/step_time_s"] = 0.030
  assert [d.flat for d in long_run_flat.drifts(noisy, 200, 2000, 0.05, 50.0, 0.15)][2] is True
  assert long_run_flat.drifts(noisy, 200, 2000, 0.05, 50.0, 0.15)[3].ratio > 1.15
  assert long_run_flat.rss_slope_mb_per_1k(rows(500.0, 0.01), 200) == pytest.approx(0.0)
  # Grown by 100 MiB mid-run, then handed back: the end looks flat, the peak does not.
  returned = rows(500.0, 0.010)
  for row in returned[20:30]:
    row["perf/host_rss_mb"] = 600.0
  assert [d.flat for d in long_run_flat.drifts(returned, 200, 2000, 0.05, 50.0, 0.15)] == [True, False, True, True]


@pytest.mark.slow
def test_two_thousand_steps_stay_flat(tmp_path, capsys):
  code = long_run_flat.main(["--steps", "2000", "--workdir", str(tmp_path)])
  out = capsys.readouterr().out
  print(out)
  assert code == 0, out
  assert "host RSS" in out and "step time" in out and "GREW" not in out
