"""The HTML report in a real headless browser (Chromium): it renders, its tables are tables
and its plots load. Skipped, saying so, where no Chromium is installed (`.ci/run` installs
Debian's)."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from test_report import make_report_doc, tables_of

from forgetctl.cli.report_render import render

BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# Only in the test's copy of the page: the product's report has no script. After load it
# records, on <body>, whether each image decoded (an <img> that failed has naturalWidth 0).
PROBE = """<script>
addEventListener("load", () => {
  document.body.dataset.images = Array.from(document.images)
    .map((img) => (img.complete && img.naturalWidth > 0 ? "loaded" : "broken")).join(" ");
});
</script>"""


class BodyData(HTMLParser):
    """The ``data-images`` attribute of the dumped page's <body>."""

    def __init__(self) -> None:
        super().__init__()
        self.images: str | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "body":
            self.images = dict(attrs).get("data-images")


@pytest.fixture(scope="module")
def browser() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        pytest.skip(f"no headless browser found ({', '.join(BROWSERS)}): install chromium")
    return found


def test_the_report_renders_in_a_browser_with_tables_and_plots(browser, tmp_path):
    page = render(make_report_doc(tmp_path), "html")
    assert "<script" not in page  # self-contained and static: nothing to run
    probed = tmp_path / "report.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "forgetctl audit report" in dom and "Request 1 (R-1)" in dom
    body = BodyData()
    body.feed(dom)
    assert body.images == "loaded loaded", body.images  # the gap plot and the relearning plot
    tables = tables_of(dom)  # as the browser built them: <table>, <tr>, <th>, <td>
    [gate] = [t for t in tables if t[0] == ["check", "mandatory", "verdict", "reasons"]]
    assert len(gate) == 9 and all(len(row) == 4 for row in gate)
    figures = [t for t in tables if t[0][:2] == ["where", "figure"]]
    assert len(figures) == 8  # one per check
    assert all(len(row) == len(t[0]) for t in figures for row in t)
