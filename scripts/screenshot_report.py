"""Render a scan's report.html in headless Chromium and check that it really rendered.

Chromium (Debian: ``apt-get install chromium``) loads the page from disk with the network
switched off, dumps the DOM it built and takes a screenshot. The check fails unless the DOM
has the report's sections, every figure is an inline data URI, and the screenshot is a
non-blank image of the expected width. Writes the screenshot (default
``scripts/results/scan_report.png``, the one docs/benchmarks.md shows) and a JSON summary.

    python scripts/screenshot_report.py runs/scan [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
SECTIONS = ("Mergeability heatmap", "Catalog clusters", "Ranked merges", "Multi-way plans")


def chromium(binary: str | None) -> str:
    for name in (binary, "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name) or name
    raise SystemExit("No Chromium found: apt-get install chromium (or pass --chromium PATH).")


def run(browser: str, page: Path, *extra: str) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    from matplotlib.image import imread

    from simmerge.infra.files import write_json_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scan_dir")
    parser.add_argument("--chromium", default=None)
    parser.add_argument("--out", default=str(ROOT / "scripts" / "results" / "scan_report.png"))
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=2600)
    args = parser.parse_args(argv)
    page = Path(args.scan_dir) / "report.html"
    browser = chromium(args.chromium)
    version = subprocess.run([browser, "--version"], capture_output=True, text=True).stdout.strip()

    dom = run(browser, page, "--dump-dom")
    missing = [s for s in SECTIONS if s not in dom]
    images = dom.count("<img")
    inline = dom.count('src="data:image/png;base64,')
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run(browser, page, f"--screenshot={out}", f"--window-size={args.width},{args.height}")
    pixels = imread(out)
    summary = {
        "chromium": version,
        "page": str(page),
        "sections_missing": missing,
        "images": images,
        "inline_images": inline,
        "screenshot": str(out),
        "screenshot_shape": list(pixels.shape),
        "screenshot_pixel_std": round(float(np.std(pixels)), 4),
    }
    ok = not missing and images == inline > 0 and pixels.shape[1] == args.width
    ok = ok and summary["screenshot_pixel_std"] > 0.02  # not a blank page
    summary["rendered"] = ok
    for k, v in summary.items():
        print(f"{k:>22}: {v}")
    write_json_report(out.with_suffix(".json"), summary)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
