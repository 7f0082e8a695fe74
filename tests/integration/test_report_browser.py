"""The report in a real headless browser (Chromium): it loads with no script error and draws the
interactive pictures. Skipped, saying why, where no Chromium is installed (.ci/run installs it)."""

import json
import os
import re
import shutil
import subprocess

import pytest
from pictures import fake_run

from landscape import report

pytest.importorskip("landscape.plots.interactive")
BROWSER = (
    os.environ.get("LANDSCAPE_CHROMIUM")
    or shutil.which("chromium")
    or shutil.which("chromium-browser")
)

# Collects the page's script errors into the DOM, where --dump-dom shows them.
WATCH = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message)));
const error = console.error;
console.error = (...args) => { window.__errors.push(args.join(" ")); error(...args); };
window.addEventListener("load", () => setTimeout(() => {
  const pre = document.createElement("pre");
  pre.id = "browser-errors";
  pre.textContent = JSON.stringify(window.__errors);
  document.body.appendChild(pre);
}, 1500));
</script>"""


@pytest.mark.skipif(BROWSER is None, reason="no Chromium here (apt-get install chromium)")
def test_the_report_loads_in_a_browser_and_draws_its_interactive_pictures(tmp_path):
    run = fake_run(tmp_path / "run")
    page = report.render_report(run)
    watched = tmp_path / "watched.html"
    watched.write_text(page.replace("<head>", "<head>" + WATCH, 1), encoding="utf-8")
    result = subprocess.run(
        [BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
         "--virtual-time-budget=8000", "--dump-dom", watched.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    errors = re.search(r'<pre id="browser-errors">(.*?)</pre>', dom, re.S)
    assert errors is not None, "the page never finished loading"
    assert json.loads(errors.group(1).replace("&quot;", '"')) == []
    # Plotly drew both interactive figures: their divs hold its SVG layers and a 3D scene.
    for name in ("interactive-bowl", "interactive-trajectory"):
        start = dom.index(f'id="{name}"')
        assert 'class="main-svg"' in dom[start : start + 200_000], name
    assert 'class="gl-container"' in dom  # the rotatable 3D surface
