"""The incident report: self-contained, escaped, notes for absent data, checked in a real
headless browser (Debian's chromium: ``make install`` installs it; missing, these fail)."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import signal
import subprocess
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from services import group_processes

from aegis.monitor.incidents import Incident
from aegis.monitor.report import render_incident_report
from aegis.monitor.windows import WindowRecord, append_windows

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = "<script>alert(1)</script>"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
_DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _windows(model: str = "digits-model", version: str = "v2.0.0", signal: str = "softmax_ks",
             n: int = 10, bad_from: int = 6) -> list[WindowRecord]:  # fmt: skip
    """``n`` one-minute windows; ``signal`` breaches from window ``bad_from`` on."""
    out = []
    for k in range(n):
        values = {signal: 0.4 if k >= bad_from else 0.1 + 0.01 * k, "label_chi2": 5.0 + k}
        thresholds = {signal: 0.25, "label_chi2": 20.0}
        out.append(WindowRecord(
            model=model, version=version, window=f"sha256:{version}:{k:060d}",
            start=_iso(T0 + timedelta(minutes=k)), end=_iso(T0 + timedelta(minutes=k, seconds=50)),
            values=values, thresholds=thresholds,
            breached=[s for s, v in values.items() if v > thresholds[s]],
        ))  # fmt: skip
    return out


def _incident(windows: list[WindowRecord], signal: str = "softmax_ks", **changes) -> Incident:
    """The incident confirmed on the three windows after the first breaching one."""
    first = next(w for w in windows if signal in w.breached)
    k = windows.index(first)
    incident = Incident(
        id=f"inc-{k:012d}", model=first.model, version=first.version, signals=[signal],
        values={signal: [0.4, 0.4, 0.4]}, thresholds={signal: 0.25},
        windows=[w.window for w in windows[k : k + 3]], first_bad=first.start,
        detected=_iso(T0 + timedelta(minutes=k + 3, seconds=5)), action="rollback",
        actor="watchman", contained=_iso(T0 + timedelta(minutes=k + 4)), top_client_share=0.83,
    )  # fmt: skip
    return replace(incident, **changes)


def _pngs(page: str) -> list[Image.Image]:
    images = [Image.open(io.BytesIO(base64.b64decode(m))) for m in _DATA_URI.findall(page)]
    for image in images:
        image.load()  # a truncated or corrupt PNG raises here
    return images


# -- the page --------------------------------------------------------------------------------


def test_the_page_has_the_incident_table_the_times_and_a_plot_per_signal():
    windows = _windows()
    incident = _incident(windows)
    page = render_incident_report(windows=windows, incidents=[incident], title="Incidents")
    for cell in (incident.id, "digits-model@v2.0.0", "softmax_ks", "2025-03-01 12:06:00",
                 "2025-03-01 12:09:05", "2025-03-01 12:10:00", "185.0", "240.0", "rollback",
                 "83%"):  # fmt: skip
        assert f"<td>{cell}</td>" in page, cell
    assert "10 tested window(s) of 1 model version(s); 1 incident(s), 1 contained." in page
    # the times bar plot, then one plot per signal of the version
    assert len(_pngs(page)) == 3
    assert "<b>digits-model@v2.0.0: label_chi2</b>" in page
    assert "<b>digits-model@v2.0.0: softmax_ks</b>" in page
    text = _DATA_URI.sub("", page)  # self-contained: no script, no link, images inline
    assert "<script" not in text.lower() and "://" not in text and "href" not in text
    assert len(re.findall(r"\ssrc=", page)) == len(_DATA_URI.findall(page))
    assert "Content-Security-Policy" in page


def test_absent_data_gives_notes_not_errors():
    page = render_incident_report(windows=[], incidents=[], title="Incidents")
    assert "No incidents: the monitor has opened none." in page
    assert "Not shown: no incidents." in page
    assert "No window history: the monitor has recorded no window." in page
    assert _pngs(page) == []

    # an incident whose version has no history; timestamps that do not parse
    windows = _windows()
    refused = {"result": "refused", "reason": "no known-good version"}
    odd = _incident(windows, version="v9", first_bad="yesterday", contained=None,
                    containment=refused)  # fmt: skip
    torn = [replace(w, end="not a time") for w in _windows(version="v3")]
    page = render_incident_report(windows=windows + torn, incidents=[odd], title="Incidents")
    assert "<h3>digits-model@v9</h3>" in page
    assert "No window history for this version" in page
    assert "<td>yesterday</td>" in page and "<td>n/a</td>" in page  # no TTD without a time
    assert "refused: no known-good version" in page
    assert "Not shown: no finite value with a parseable time." in page  # v3's plots
    assert "Not shown: no incident has parseable times." in page  # no times plot


def test_hostile_names_are_escaped_and_never_break_the_plots():
    windows = _windows(model=f"m{HOSTILE}", version="v1'\"&", signal=f"{HOSTILE}$x^{{")
    incident = _incident(windows, signal=f"{HOSTILE}$x^{{", action=HOSTILE, id=f"inc{HOSTILE}")
    page = render_incident_report(windows=windows, incidents=[incident], title=f"t{HOSTILE}")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert len(_pngs(page)) == 3  # mathtext never parsed the '$'


# -- in a real browser -----------------------------------------------------------------------


def _chromium(page: Path, tmp: Path, *mode: str) -> subprocess.CompletedProcess:
    """Runs headless chromium on ``page`` in a private profile and HOME; leaves nothing."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: the report is checked in a real browser; install "
                    "it with `apt-get install chromium` (make install does, as root)")  # fmt: skip
    home = tmp / "chromium-home"
    home.mkdir(exist_ok=True)
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache"), "LANG": "C.UTF-8"}  # fmt: skip
    args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={home / 'profile'}", "--window-size=1200,2000",
            "--enable-logging=stderr", "--v=0", *mode, page.as_uri()]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # its helpers share its process group
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    _assert_group_gone(proc.pid)
    assert proc.returncode == 0, err[-2000:]
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _assert_group_gone(pgid: int) -> None:
    # SIGKILLed processes vanish when the kernel next schedules them: a bounded wait, as
    # the session's own leftover check does
    deadline = time.monotonic() + 30
    while (left := group_processes(pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"chromium processes still running: {left}"


def _console_errors(stderr: str) -> list[str]:
    """The page's console messages (it has no script: any message is an error)."""
    return [line for line in stderr.splitlines() if re.search(r"CONSOLE[:(]|Uncaught", line)]


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.text: dict[str, list[str]] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._open.append(tag)
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag) :]

    def handle_data(self, data: str) -> None:
        if self._open:
            self.text.setdefault(self._open[-1], []).append(data)


def test_a_real_browser_renders_the_report_without_console_errors(tmp_path):
    windows = _windows() + _windows(version="v3.0.0", signal="ood_count", bad_from=20)
    incidents = [_incident(windows), _incident(windows, contained=None, action="alert",
                                               id="inc-open")]  # fmt: skip
    page = tmp_path / "report.html"
    page.write_text(render_incident_report(windows=windows, incidents=incidents, title="Incidents"))
    shot = tmp_path / "shot.png"
    run = _chromium(page, tmp_path, f"--screenshot={shot}")
    assert _console_errors(run.stderr) == []
    image = Image.open(shot)
    image.load()
    assert image.size == (1200, 2000)
    rgb = image.convert("RGB")
    colours = rgb.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is (almost) one colour"
    # the plots were decoded and drawn: matplotlib's first colour (C0, #1f77b4) is on screen
    assert any(abs(r - 31) + abs(g - 119) + abs(b - 180) < 30 for _, (r, g, b) in colours)


def test_hostile_names_are_text_in_the_browser_dom(tmp_path):
    windows = _windows(model=f"m{HOSTILE}", signal=HOSTILE)
    incident = _incident(windows, signal=HOSTILE, id=f"inc-{HOSTILE}")
    page = tmp_path / "report.html"
    page.write_text(render_incident_report(windows=windows, incidents=[incident],
                                           title=f"Incidents {HOSTILE}"))  # fmt: skip
    run = _chromium(page, tmp_path, "--dump-dom")
    assert _console_errors(run.stderr) == []
    dom = _Dom()
    dom.feed(run.stdout)
    assert "script" not in dom.tags and "iframe" not in dom.tags
    assert "table" in dom.tags
    assert dom.text["h1"] == [f"Incidents {HOSTILE}"]  # shown as text, exactly
    assert f"inc-{HOSTILE}" in dom.text["td"]
    assert len(dom.images) == 3  # the times, then the version's label_chi2 and hostile signal
    assert all(src.startswith("data:image/png;base64,") for src in dom.images)


def test_the_console_check_catches_a_page_error(tmp_path):
    """The check above would see a script error (the negative control)."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><p>x</p><script>undefinedFunction();</script></body></html>")
    run = _chromium(page, tmp_path, "--dump-dom")
    assert any("Uncaught" in line for line in _console_errors(run.stderr)), run.stderr[-2000:]


# -- aegis report incidents ------------------------------------------------------------------


def test_cli_writes_the_report_of_a_workspace_without_incidents(cli, env, tmp_path):
    res = cli("--workspace", env.root, "report", "incidents", cwd=tmp_path)
    assert res.code == 0, res.err
    out = tmp_path / "incidents-report.html"
    assert Path(res.out.strip()).resolve() == out.resolve()
    page = out.read_text()
    assert "No incidents: the monitor has opened none." in page
    assert "No window history" in page
    assert not list(tmp_path.glob(".incidents-report.html.*"))  # the atomic write's temp


def test_cli_plots_the_appended_windows_and_reads_the_newest_last(cli, env, tmp_path):
    append_windows(env.ws, _windows() + _windows(version="v3.0.0"))
    out = tmp_path / "report.html"
    res = cli("--workspace", env.root, "report", "incidents", "--out", out)
    assert res.code == 0, res.err
    page = out.read_text()
    assert "<h3>digits-model@v2.0.0</h3>" in page and "<h3>digits-model@v3.0.0</h3>" in page
    assert len(_pngs(page)) == 4  # two signals of two versions; no incidents, no times plot

    res = cli("--workspace", env.root, "report", "incidents", "--out", out, "--last", "3")
    assert res.code == 0, res.err
    page = out.read_text()
    assert "3 tested window(s) of 1 model version(s)" in page
    assert "digits-model@v2.0.0" not in page

    res = cli("--workspace", env.root, "report", "incidents", "--out", out, "--last", "0")
    assert res.code == 2 and "--last 0" in res.err


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo"])
def test_cli_refuses_an_out_that_is_not_a_regular_file(cli, env, tmp_path, kind):
    target = tmp_path / "elsewhere.html"
    target.write_text("kept")
    out = tmp_path / "report.html"
    if kind == "symlink":
        out.symlink_to(target)
    elif kind == "directory":
        out.mkdir()
    else:
        os.mkfifo(out)
    res = cli("--workspace", env.root, "report", "incidents", "--out", out)
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.err, res.err
    assert "--out" in lines[0]
    assert target.read_text() == "kept"
    assert out.is_symlink() or out.is_dir() or out.is_fifo()  # left as it was
