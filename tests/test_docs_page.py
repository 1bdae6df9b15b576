"""``/docs`` renders in a real browser under the same-origin CSP: no CDN, no inline script."""

from __future__ import annotations

import shutil
from pathlib import Path

from app.cli.local import ThreadServer
from app.config import Settings
from app.migrate import upgrade
from tests.conftest import require

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_docs_render_under_the_csp(tmp_path: Path) -> None:
    require(Path(CHROMIUM).exists(), "chromium")
    from playwright.sync_api import sync_playwright

    db_url = f"sqlite:///{tmp_path / 'docs.db'}"
    upgrade(db_url)
    with ThreadServer(Settings(database_url=db_url)) as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        foreign: list[str] = []
        failed: list[str] = []
        csp: list[str] = []
        page.on(
            "request", lambda r: foreign.append(r.url) if not r.url.startswith((srv.url, "data:")) else None
        )
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
        response = page.goto(srv.url + "/docs")
        assert response is not None and "default-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
        operations = page.locator(".swagger-ui .opblock").count()
        browser.close()
    print(
        f"\n/docs: {operations} operations rendered; foreign requests {len(foreign)}, CSP reports {len(csp)}"
    )
    assert operations >= 15
    assert not foreign and not failed and not csp, (foreign, failed, csp)
