"""Screenshots of the three tabs of `sonosynth app` for the docs (docs/images/app-*.png), in headless Chromium.

    python docs/make_app_screenshots.py RUN --dataset DATASET --segmenter SEGRUN --review SYNTHETIC [--out docs/images]

Starts the app on a free loopback port, loads the dataset's first mask and generates, loads its first
scan and paints a larger head for RePaint, opens the review grid and selects the first pair.
"""

from __future__ import annotations

import argparse
import shutil
import socket
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--segmenter")
    parser.add_argument("--review")
    parser.add_argument("--out", default="docs/images")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from sonosynth.app.session import AppSession
    from sonosynth.app.ui import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    app = serve(AppSession(args.run, args.dataset, args.segmenter, device="cpu"), args.review, port=port, block=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                                   "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#mask-canvas canvas")
        page.get_by_role("button", name="load", exact=True).first.click()
        page.wait_for_timeout(1500)
        page.click("#generate-button")
        page.wait_for_selector("#generated-image img")
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "app-generate.png"))

        page.get_by_role("tab", name="Edit").click()
        page.get_by_role("button", name="load", exact=True).last.click()
        page.wait_for_timeout(2000)
        canvas = page.locator("#edit-canvas canvas").first
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x - 60, y - 40)
        page.mouse.down()
        page.mouse.move(x + 60, y + 40, steps=15)
        page.mouse.up()
        page.click("#edit-button")
        page.wait_for_selector("#edit-result img >> nth=2")
        page.wait_for_timeout(1000)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(out / "app-edit.png"))

        if args.review:
            page.get_by_role("tab", name="Review").click()
            page.click("#review-show")
            page.wait_for_selector("#review-grid img >> nth=0")
            page.locator("#review-grid img").first.click()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "app-review.png"))
        browser.close()
    app.close()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
