"""Check the built manual renders its maths without network access.

Every page that loads MathJax must load the copy shipped in the build
(``_static/mathjax``), never a CDN; and no page may load any other script
from the network.  With ``--screenshot`` (needs Chromium) it also renders
the model page headless, with networking disabled, and checks that no raw
TeX delimiters remain in the rendered text.

Run after the build: ``python docs/check_offline.py [docs/_build/html]``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path


def check_static(html_dir: Path) -> list[str]:
    problems = []
    pages = sorted(html_dir.glob("*.html"))
    if not pages:
        return [f"no HTML pages in {html_dir}"]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for src in re.findall(r'<script[^>]*src="([^"]+)"', text):
            if src.startswith(("http://", "https://", "//")):
                problems.append(f"{page.name}: loads {src} from the network")
            elif "mathjax" in src.lower() and not (html_dir / src.split("?")[0]).exists():
                problems.append(f"{page.name}: {src} is not in the build")
    if not any("_static/mathjax" in p.read_text(encoding="utf-8") for p in pages):
        problems.append("no page loads the shipped MathJax")
    return problems


def check_rendered(html_dir: Path) -> list[str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return ["--screenshot needs Chromium"]
    page = (html_dir / "model.html").resolve()
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu",
        "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # no network
        "--virtual-time-budget=15000", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    problems = []
    if "mjx-container" not in dom:
        problems.append("MathJax did not typeset the model page")
    text = re.sub(r"<script.*?</script>", "", dom, flags=re.S)
    text = re.sub(r"<[^>]+>", "", text)
    if "\\(" in text or "\\[" in text or "$$" in text:
        problems.append("raw TeX delimiters remain in the rendered model page")
    shot = html_dir.parent / "model_page.png"
    subprocess.run(
        [*cmd[:-2], f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    return problems


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    html_dir = Path(args[0] if args else Path(__file__).parent / "_build" / "html")
    problems = check_static(html_dir)
    if "--screenshot" in sys.argv:
        problems += check_rendered(html_dir)
    for p in problems:
        print(f"check_offline: {p}", file=sys.stderr)
    if not problems:
        print(f"check_offline: {html_dir} renders its maths offline")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
