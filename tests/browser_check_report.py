"""Opens an fmjax report in a real headless Chromium and checks that every plot loaded.

    python tests/browser_check_report.py [REPORT.html] [--screenshot shot.png]

Without REPORT.html it first writes the report of two small hand-written runs (tests/report_runs.py)
to a temporary folder. The page is copied with a short script added that, once the page has
loaded, stamps every <img> with the width the browser decoded (naturalWidth); Chromium's
--dump-dom prints the resulting DOM, and the check passes when the page has as many plots as its
HTML names and each decoded to a width > 0. The report itself carries no script.

Prints one line per plot and `ok: N of N plots loaded`; exit status 0 when all loaded, 1 when
not, 3 when no Chromium is found (set $CHROMIUM to its binary if it has another name). Needs
Chromium (Debian: apt-get install -y chromium) and, to write the sample report, fmjax.
"""

import argparse
import html.parser
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
NO_BROWSER = 3

_MARK_IMAGES = """<script>
window.addEventListener("load", function () {
  document.querySelectorAll("img").forEach(function (img) {
    img.setAttribute("data-natural-width", String(img.naturalWidth));
    img.setAttribute("data-natural-height", String(img.naturalHeight));
  });
  document.body.setAttribute("data-images-checked", "yes");
});
</script>"""


def find_browser():
  named = os.environ.get("CHROMIUM")
  if named:
    return shutil.which(named)
  return next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)


class _Images(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.images, self.checked = [], False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "img":
      self.images.append(attrs)
    if tag == "body" and attrs.get("data-images-checked") == "yes":
      self.checked = True


def images_of(text: str) -> _Images:
  parser = _Images()
  parser.feed(text)
  return parser


def sample_report(folder: pathlib.Path) -> pathlib.Path:
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  import report_runs  # pylint: disable=g-import-not-at-top
  from fmjax import report  # pylint: disable=g-import-not-at-top
  report_runs.write_run(folder / "runs" / "lr=0.001", learning_rate=1e-3)
  report_runs.write_run(folder / "runs" / "lr=0.003", learning_rate=3e-3, logged_until=24, truncated=True)
  return pathlib.Path(report.write_report([str(folder / "runs")], str(folder / "report.html")))


def check(report_path: pathlib.Path, browser: str, screenshot=None) -> int:
  text = report_path.read_text()
  expected = len(images_of(text).images)
  with tempfile.TemporaryDirectory() as scratch:
    marked = pathlib.Path(scratch) / "marked.html"
    marked.write_text(text.replace("</body>", _MARK_IMAGES + "</body>"))
    common = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
              f"--user-data-dir={scratch}/profile", "--virtual-time-budget=10000"]
    done = subprocess.run(common + ["--dump-dom", marked.as_uri()], capture_output=True, text=True, timeout=180)
    if screenshot:
      subprocess.run(common + [f"--screenshot={os.path.abspath(screenshot)}", "--window-size=1400,3000",
                               marked.as_uri()], capture_output=True, timeout=180)
  dom = images_of(done.stdout)
  if done.returncode != 0 or not dom.checked:
    print(f"FAILED: Chromium exited {done.returncode} without running the page's load handler; stderr tail:\n"
          + done.stderr[-2000:])
    return 1
  loaded = 0
  for image in dom.images:
    width = int(image.get("data-natural-width", "0"))
    height = int(image.get("data-natural-height", "0"))
    loaded += width > 0
    print(f"{image.get('data-metric', image.get('alt', '?')):<40} {width} x {height}")
  print(f"{'ok' if loaded == expected == len(dom.images) and expected else 'FAILED'}: {loaded} of {expected} plots "
        f"loaded in {os.path.basename(browser)} ({report_path})")
  return 0 if loaded == expected == len(dom.images) and expected else 1


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("report", nargs="?", help="a report's HTML (default: write a sample one)")
  parser.add_argument("--screenshot", help="also save a PNG of the page as Chromium shows it")
  args = parser.parse_args(argv)
  browser = find_browser()
  if not browser:
    print(f"no Chromium found (looked for {', '.join(BROWSERS)}; set $CHROMIUM)")
    return NO_BROWSER
  if args.report:
    return check(pathlib.Path(args.report), browser, args.screenshot)
  with tempfile.TemporaryDirectory() as folder:
    return check(sample_report(pathlib.Path(folder)), browser, args.screenshot)


if __name__ == "__main__":
  sys.exit(main())
