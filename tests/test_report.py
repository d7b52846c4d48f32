"""fmjax.report on hand-written runs (tests/report_runs.py): no training, no JAX."""

import base64
import io
import json
import math
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

import report_runs
from fmjax import config_diff, paths, report, report_plan, report_plots, run_records

IMG = re.compile(r'<img alt="[^"]*" data-metric="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


@pytest.fixture
def two_runs(tmp_path):
  """Two finished causal_lm runs of 40 steps that differ only in optim.learning_rate."""
  a = report_runs.write_run(tmp_path / "runs" / "lr=0.001", learning_rate=1e-3)
  b = report_runs.write_run(tmp_path / "runs" / "lr=0.003", learning_rate=3e-3)
  return str(a), str(b)


def section(page: str, heading: str) -> str:
  """The HTML between <h2>heading</h2> and the next <h2>."""
  return page.split(f"<h2>{heading}</h2>", 1)[1].split("<h2>", 1)[0]


def test_config_diff_shows_exactly_the_differing_field_and_both_values(two_runs, tmp_path):
  configs = [report.load_run(d).config for d in two_runs]
  assert config_diff.differing_fields(configs) == {"optim.learning_rate": [1e-3, 3e-3]}
  page = open(report.write_report(list(two_runs), str(tmp_path / "report.html"))).read()
  table = section(page, "Config differences")
  fields = re.findall(r"<tr><th>([^<]+)</th><td", table)
  assert fields == ["optim.learning_rate"]
  assert re.findall(r"<td>([^<]+)</td>", table) == ["0.001", "0.003"]
  # Identical configs say so instead of showing a table.
  same = report_runs.write_run(tmp_path / "same", learning_rate=1e-3)
  page = open(report.write_report([two_runs[0], str(same)], str(tmp_path / "same.html"))).read()
  assert "<p>no differing fields</p>" in section(page, "Config differences")


def test_flatten_and_diff_handle_nesting_absent_fields_and_types():
  assert config_diff.flatten({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": {}}) == {"a.b.c": 1, "a.d": [1, 2], "e": {}}
  diff = config_diff.differing_fields([{"x": 1, "y": {"z": 1}}, {"x": 1.0, "y": {"z": 1}, "w": "s"}, None])
  assert list(diff) == ["w", "x"]  # 1 and 1.0 differ in a config; the run without one takes no part
  assert diff["w"][0] is config_diff.ABSENT and diff["w"][1:] == ["s", None]
  assert config_diff.show(config_diff.ABSENT) == "(absent)"


def test_train_loss_plot_overlays_both_runs_raw_and_smoothed(two_runs):
  plan = report.plan_report(list(two_runs), smooth=0.6)
  loss = next(p for p in plan.plots if p.metric == "train/loss")
  assert loss.style == "line" and [c.run for c in loss.curves] == ["lr=0.001", "lr=0.003"]
  for curve, lr in zip(loss.curves, (1e-3, 3e-3)):
    assert curve.steps == tuple(range(2, 41, 2))
    assert curve.values == pytest.approx([report_runs.loss_at(s, lr) for s in curve.steps])
  # What matplotlib drew: per run a faint raw line and a bold smoothed one, in one colour.
  palette = report_plots.run_colors(2)
  axes = report_plots.figure(loss, palette, plan.smooth).axes[0]
  lines = {line.get_label(): line for line in axes.get_lines()}
  assert sorted(lines) == ["_lr=0.001 (raw)", "_lr=0.003 (raw)", "lr=0.001", "lr=0.003"]
  assert [t.get_text() for t in axes.get_legend().get_texts()] == ["lr=0.001", "lr=0.003"]
  for curve in loss.curves:
    raw, smoothed = lines[f"_{curve.run} (raw)"], lines[curve.run]
    assert list(raw.get_xdata()) == list(curve.steps) and list(raw.get_ydata()) == pytest.approx(curve.values)
    assert list(smoothed.get_ydata()) == pytest.approx(report_plan.debiased_ema(list(curve.values), 0.6))
    assert raw.get_alpha() < 1 and smoothed.get_linewidth() > raw.get_linewidth()
    assert raw.get_color() == smoothed.get_color() == palette[curve.run_index]
  # Eval metrics are points (markers), whatever row of the file they were logged in.
  eval_loss = next(p for p in plan.plots if p.metric == "eval/loss")
  assert eval_loss.style == "points" and eval_loss.curves[0].steps == (10, 20, 30, 40)
  drawn = report_plots.figure(eval_loss, palette, plan.smooth).axes[0].get_lines()
  assert [line.get_marker() for line in drawn] == ["o", "o"]


def test_debiased_ema_by_hand():
  # weight 0.5: running means 0.5, 1.25, 1.125 over 1 - 0.5**n = 0.5, 0.75, 0.875.
  assert report_plan.debiased_ema([1.0, 2.0, 1.0], 0.5) == pytest.approx([1.0, 1.25 / 0.75, 1.125 / 0.875])
  assert report_plan.debiased_ema([3.0] * 5, 0.9) == pytest.approx([3.0] * 5)  # no pull towards 0
  assert report_plan.debiased_ema([1.0, 5.0], 0.0) == [1.0, 5.0]
  with pytest.raises(ValueError, match=r"--smooth=1.0: give a number in \[0, 1\)"):
    report_plan.check_smooth(1.0)


def test_html_has_one_decodable_png_per_metric_and_the_pngs_beside_it(two_runs, tmp_path):
  out = report.write_report(list(two_runs), str(tmp_path / "out" / "report.html"))
  assert out == str(tmp_path / "out" / "report.html")
  plan = report.plan_report(list(two_runs))
  page = open(out).read()
  images = IMG.findall(page)
  assert page.count("<img") == len(images) == len(plan.plots)
  assert [metric for metric, _ in images] == [p.metric for p in plan.plots]
  # The shared metrics of two causal_lm runs; eval/tokens is constant (512) and named in a note.
  assert [p.metric for p in plan.plots] == ["train/loss", "train/grad_norm", "train/learning_rate", "train/param_norm",
                                            "eval/loss", "eval/perplexity", "perf/units_per_s"]
  assert "constant, so not plotted: eval/tokens = 512" in page
  for _, data in images:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    assert image.format == "PNG" and image.size == (640, 400)
  assert sorted(os.listdir(tmp_path / "out" / "report_files")) == sorted(report.png_names(plan.plots))
  with Image.open(tmp_path / "out" / "report_files" / "train_loss.png") as image:
    assert image.size == (640, 400)
  # Self-contained: nothing is fetched (no other src, no stylesheet or script links).
  assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page
  # The final figures: last step and last value of each metric, per run.
  final = section(page, "Final figures")
  assert final.count(">finished<") == 2
  assert f"{report_runs.loss_at(40, 3e-3):.5g}" in final and f"{report_runs.loss_at(40, 1e-3):.5g}" in final


def test_run_in_progress_with_a_truncated_last_line(two_runs, tmp_path):
  growing = report_runs.write_run(tmp_path / "runs" / "growing", learning_rate=2e-3, logged_until=24, truncated=True)
  run = report.load_run(str(growing))
  assert (run.last_step, run.total_steps, run.finished) == (24, 40, False)
  assert run.status == "in progress (24 of 40 steps)"
  assert any("1 line(s) of metrics.jsonl did not parse" in p for p in run.problems)
  assert run.series("train/loss")[0] == list(range(2, 25, 2))
  page = open(report.write_report([two_runs[0], str(growing)], str(tmp_path / "report.html"))).read()
  assert "in progress (24 of 40 steps)" in section(page, "Final figures")
  assert "growing: 1 line(s) of metrics.jsonl did not parse" in section(page, "Notes")


def test_rows_of_a_resumed_run_and_non_finite_values(tmp_path):
  """A resumed run logs some steps twice (the later row wins); NaN is left out of the plot but
  shown as the last value."""
  folder = tmp_path / "resumed"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(report_runs.config(steps=6)))
  rows = [{"step": 2, "train/loss": 3.0}, {"step": 4, "train/loss": 2.0}, {"step": 2, "train/loss": 2.9},
          {"step": 4, "train/loss": 1.9}, {"step": 6, "train/loss": float("nan")}, ["not", "a", "row"]]
  (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  run = report.load_run(str(folder))
  assert run.series("train/loss") == ([2, 4], [2.9, 1.9], 1)
  assert math.isnan(run.last_value("train/loss")) and run.finished
  plan = report.plan_report([str(folder)])
  assert any("train/loss has 1 non-finite value(s)" in n for n in plan.notes)


def test_a_dir_without_a_run_is_the_named_error_exit_2(tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(SystemExit) as exit_info:
    report.main([str(empty), "--out", str(tmp_path / "r.html")])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == f"error: {empty}: not a run directory (no config.json or metrics.jsonl)\n"
  with pytest.raises(ValueError, match=r"^/no/such/dir: not a run directory \(no config.json or metrics.jsonl\)$"):
    report.write_report(["/no/such/dir"], str(tmp_path / "r.html"))
  assert not (tmp_path / "r.html").exists()
  with pytest.raises(ValueError, match=r"^--out='r.pdf': give a file name ending in .html"):
    report.write_report([str(empty)], "r.pdf")


def test_usable_dirs_are_reported_and_the_others_named(two_runs, tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  configured = tmp_path / "runs" / "starting"
  configured.mkdir()
  (configured / "config.json").write_text(json.dumps(report_runs.config()))
  configless = report_runs.write_run(tmp_path / "runs" / "configless", with_config=False)
  out = tmp_path / "report.html"
  assert report.main([two_runs[0], str(configured), str(configless), str(empty), "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert f"note: {empty}: not a run directory" in printed and "starting  " in printed
  page = out.read_text()
  assert "starting: no metrics yet" in page and "no metrics yet" in section(page, "Final figures")
  assert "configless: no config.json" in page and "unknown (no config.json)" in section(page, "Final figures")
  loss = next(p for p in report.plan_report([two_runs[0], str(configless)]).plots if p.metric == "train/loss")
  assert [c.run for c in loss.curves] == ["lr=0.001", "configless"]
  # A run that has only compiled (one step-0 row) leaves the others' shared plots as they are.
  compiled = report_runs.write_run(tmp_path / "runs" / "compiled", logged_until=0)
  plan = report.plan_report([*two_runs, str(compiled)])
  assert "compiled: no train or eval metrics yet (last step 0)" in plan.notes
  assert [p.metric for p in plan.plots] == [p.metric for p in report.plan_report(list(two_runs)).plots]
  assert all(p.group == report_plan.SHARED_GROUP for p in plan.plots)


def test_a_sweep_root_expands_to_its_runs_in_sorted_order(tmp_path):
  for name in ("b", "a", "c"):
    report_runs.write_run(tmp_path / "root" / name)
  (tmp_path / "root" / "not_a_run").mkdir()
  report_runs.write_run(tmp_path / "other" / "a")
  found, problems = run_records.find_runs([str(tmp_path / "root"), str(tmp_path / "root" / "b")])
  assert found == [str(tmp_path / "root" / n) for n in "abc"] and not problems
  plan = report.plan_report([str(tmp_path / "root"), str(tmp_path / "other")])
  assert [r.name for r in plan.runs] == ["root/a", "root/b", "root/c", "other/a"]  # two runs named "a"


def test_runs_of_another_paradigm_are_noted_and_only_shared_metrics_overlaid(two_runs, tmp_path):
  clip = report_runs.write_run(tmp_path / "clip", objective="contrastive", learning_rate=2e-3)
  plan = report.plan_report([*two_runs, str(clip)])
  assert any("different paradigms (causal_lm: lr=0.001, lr=0.003; contrastive: clip)" in n and
             "not comparable" in n for n in plan.notes)
  shared = {p.metric: [c.run for c in p.curves] for p in plan.plots if p.group == report_plan.SHARED_GROUP}
  assert shared["train/loss"] == ["lr=0.001", "lr=0.003", "clip"]
  assert "eval/perplexity" not in shared and "train/logit_scale" not in shared
  own = {(p.group, p.metric): [c.run for c in p.curves] for p in plan.plots if p.group}
  assert own == {("causal_lm", "eval/perplexity"): ["lr=0.001", "lr=0.003"],
                 ("contrastive", "train/logit_scale"): ["clip"], ("contrastive", "eval/zeroshot_top1"): ["clip"]}
  page = open(report.write_report([*two_runs, str(clip)], str(tmp_path / "mixed.html"))).read()
  assert "their metrics are not comparable" in page and "Logged by only some runs: contrastive" in page


def test_requested_metrics_and_unknown_names(two_runs, tmp_path, capsys):
  out = tmp_path / "picked.html"
  assert report.main([*two_runs, "--metric", "train/loss", "--metric", "eval/bogus", "--metric", "perf/step_time_s",
                      "--out", str(out)]) == 0
  page = out.read_text()
  assert [m for m, _ in IMG.findall(page)] == ["train/loss", "perf/step_time_s"]
  assert "--metric eval/bogus: no run logged it" in page
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    report.main([*two_runs, "--metric", "eval/bogus", "--out", str(tmp_path / "none.html")])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.startswith("error: --metric eval/bogus: no run logged any of them (logged: train/loss")


def test_png_output_mode_is_one_grid_of_every_plot(two_runs, tmp_path):
  out = report.write_report(list(two_runs), str(tmp_path / "grid.png"))
  plan = report.plan_report(list(two_runs))
  rows = math.ceil(len(plan.plots) / report_plots.GRID_COLUMNS)
  with Image.open(out) as image:
    assert image.format == "PNG" and image.size == (640 * 3, 400 * rows + 50)
  assert sorted(os.listdir(tmp_path)) == ["grid.png", "runs"]  # no page, no folder of PNGs
  fig = report_plots.grid_figure(plan.plots, report_plots.run_colors(2), ["lr=0.001", "lr=0.003"], plan.smooth)
  assert [ax.get_title() for ax in fig.axes] == [p.title for p in plan.plots]
  assert [t.get_text() for t in fig.legends[0].get_texts()] == ["lr=0.001", "lr=0.003"]


def test_runs_on_a_gs_bucket(two_runs, tmp_path, monkeypatch):
  """A sweep root given as a gs:// URL is listed and read through fmjax.paths (a fake bucket)."""
  from etils.epath import testing as epath_testing
  store = tmp_path / "store"
  for run in two_runs:
    report_runs.write_run(store / "bucket" / "sweep" / os.path.basename(run), learning_rate=1e-3)

  def local(path):
    path = os.fspath(path)
    return str(store / path[len("gs://"):]) if path.startswith("gs://") else path

  def mapped(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  monkeypatch.setitem(paths.REMOTE_PACKAGES, "gs", ())
  with epath_testing.mock_epath(exists=mapped, isdir=mapped, listdir=mapped, open=mapped):
    plan = report.plan_report(["gs://bucket/sweep/"])
  assert [(r.name, r.path) for r in plan.runs] == [("lr=0.001", "gs://bucket/sweep/lr=0.001"),
                                                    ("lr=0.003", "gs://bucket/sweep/lr=0.003")]
  assert all(r.finished for r in plan.runs) and plan.plots


def test_the_command_runs_as_a_module(two_runs, tmp_path):
  done = subprocess.run([sys.executable, "-m", "fmjax.report", *two_runs, "--out", str(tmp_path / "r.html"),
                         "--smooth", "0.9"], capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert done.stdout.splitlines()[0] == f"report of 2 run(s), 7 plot(s) -> {tmp_path / 'r.html'}"
  assert "smoothing 0.9" in (tmp_path / "r.html").read_text()
  bad = subprocess.run([sys.executable, "-m", "fmjax.report", *two_runs, "--smooth", "x"], capture_output=True,
                       text=True, timeout=120)
  assert bad.returncode == 2 and bad.stderr.startswith("error: argument --smooth: invalid float value: 'x'")


@pytest.mark.slow
def test_report_renders_in_headless_chromium():
  """tests/browser_check_report.py in a real browser: every plot decodes (naturalWidth > 0)."""
  script = os.path.join(os.path.dirname(__file__), "browser_check_report.py")
  sys.path.insert(0, os.path.dirname(__file__))
  import browser_check_report  # pylint: disable=g-import-not-at-top
  if not browser_check_report.find_browser():
    pytest.skip("no Chromium binary found (apt-get install -y chromium, or set $CHROMIUM)")
  done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout + done.stderr
  assert re.search(r"^ok: (\d+) of \1 plots loaded", done.stdout, re.M), done.stdout
