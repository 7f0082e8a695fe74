"""Interactive pictures in the report: a 2D surface and a trajectory become plotly figures,
the library embedded once; without the extra the report keeps its static figures."""

import re

import pytest
from pictures import fake_run

from landscape import report

interactive = pytest.importorskip("landscape.plots.interactive")  # the interactive extra


def test_surfaces_and_trajectories_become_interactive_figures(tmp_path):
    run = fake_run(tmp_path / "run")
    page = report.render_report(run)
    assert page.count('class="interactive"') == 2  # the 2D surface and the trajectory
    assert 'id="interactive-bowl"' in page and 'id="interactive-trajectory"' in page
    assert 'id="interactive-line"' not in page  # a 1D slice stays a static figure
    script = interactive.plotly_script()
    assert page.count(script) == 1 and page.index(script) < page.index("<body>")
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing fetched: it opens offline
    assert '"type":"surface"' in page and '"customdata":[0,5,10,15]' in page


def test_without_the_extra_the_report_is_static(tmp_path, monkeypatch):
    run = fake_run(tmp_path / "run")
    monkeypatch.setattr(report, "interactive", None)
    page = report.render_report(run)
    assert 'class="interactive"' not in page and "Plotly" not in page
    assert page.count("data:image/png;base64,") >= 4  # the static pictures are all there
