"""The report escapes all data set and model text, checked in a real headless Chromium.

A tiny tracked run whose prompts, responses, prompt ids and run label carry a ``<script>`` and an
``<img onerror>`` is turned into report.html by ``lldyn report``; Chromium loads it, runs whatever
scripts it holds and dumps the DOM: the title must be unchanged and no injected element present,
while the payload text is visible as text. A control page with the same payload *unescaped* shows
that the harness does catch a script that runs. A screenshot must show a rendered page (pixel
variance), not a blank one.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lldyn.cli import main
from lldyn.probes import Probe, ProbeSet
from lldyn.rundir import RunDir
from lldyn.tracking import Tracker

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (Debian package "
                                "'chromium'; `make test` tries to install it): the browser check cannot run")

SCRIPT = "<script>document.title='pwned'</script>"
IMG = "<img src=x onerror=\"document.body.insertAdjacentHTML('beforeend','<p id=pwned>PWNED</p>')\">"
TITLE = "lldyn learning dynamics report"


def chromium(*args: str) -> str:
    proc = subprocess.run([str(CHROMIUM), "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
                           "--hide-scrollbars", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def dump_dom(page: Path) -> str:
    """The DOM after the page's scripts ran (2 s of virtual time for load and error events)."""
    return chromium("--virtual-time-budget=2000", "--dump-dom", page.resolve().as_uri())


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """report.html of a tiny tracked run whose every text field carries the payloads."""
    import torch

    from lldyn.models import ModelConfig, load_model

    root = tmp_path_factory.mktemp("browser")
    evil_prompt = f"Explain {SCRIPT} and {IMG} please?"
    probes = ProbeSet((
        Probe(f"x{IMG}", "chosen", evil_prompt, f"Sure: {SCRIPT}{IMG}"),
        Probe(f"x{IMG}", "rejected", evil_prompt, f"No {IMG} & no."),
        Probe("y", "chosen", [{"role": "user", "content": f"Chat {SCRIPT}"}], f"Fine {IMG}"),
        Probe("y", "rejected", [{"role": "user", "content": f"Chat {SCRIPT}"}], "Rome.")))
    lm = load_model(ModelConfig(name="tiny-random-llama"))
    run = RunDir.create(root / "run", {"label": f"run {SCRIPT}{IMG}", "method": "dpo", "lr": 0.01})
    tracker = Tracker(lm.model, lm.tokenizer, probes, run=run, every=5, initial_sample=False)
    gen = torch.Generator().manual_seed(0)
    for step in (0, 5, 10):
        if step:
            with torch.no_grad():
                for p in lm.model.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=gen))
        tracker.track(step)
    assert main(["report", str(run.path)]) == 0
    return run.path / "report.html"


def test_payload_in_report_does_not_execute(report, tmp_path):
    page = report.read_text(encoding="utf-8")
    assert SCRIPT not in page and "<img src=x" not in page  # escaped in the file ...
    dom = dump_dom(report)
    assert f"<title>{TITLE}</title>" in dom  # ... and nothing ran in the browser
    assert 'id="pwned"' not in dom and "PWNED</p>" not in dom.replace("&lt;/p&gt;", "")
    assert dom.count("&lt;script&gt;document.title='pwned'&lt;/script&gt;") >= 3  # shown as text
    assert "&lt;img src=x onerror=" in dom

    control = tmp_path / "control.html"  # the same page with the payload not escaped: the harness sees it run
    control.write_text(page.replace("</body>", f"{SCRIPT}{IMG}</body>"), encoding="utf-8")
    control_dom = dump_dom(control)
    assert "<title>pwned</title>" in control_dom and 'id="pwned"' in control_dom


def test_report_renders_a_non_blank_page(report, tmp_path):
    from matplotlib import image

    shot = tmp_path / "report.png"
    chromium("--window-size=1200,1600", f"--screenshot={shot}", report.resolve().as_uri())
    pixels = image.imread(shot)[..., :3]  # floats in [0, 1]
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    assert float(pixels.std()) > 0.05  # text, tables and the embedded figures, not a blank page
    ink = (pixels.mean(axis=-1) < 0.6).mean()
    assert 0.002 < ink < 0.5, ink  # some dark pixels (text, curves) on a mostly light page

    blank = tmp_path / "blank.html"  # control: an empty page has no variance
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    chromium("--window-size=1200,1600", f"--screenshot={tmp_path / 'blank.png'}", blank.resolve().as_uri())
    assert float(image.imread(tmp_path / "blank.png")[..., :3].std()) < 0.01

