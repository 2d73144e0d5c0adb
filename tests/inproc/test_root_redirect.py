"""``GET /`` on the client port: a browser is sent to the dashboard, a JSON client still gets a 404."""

from __future__ import annotations

from pathlib import Path

import requests
import umbridge

from tests.fakes import serve_in_thread
from tests.helpers import test_model_spec


def test_a_browser_is_redirected_to_the_dashboard_and_clients_are_not(tmp_path: Path):
    with serve_in_thread(tmp_path, [test_model_spec()]) as b:
        html = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        r = requests.get(b.url + "/", headers={"Accept": html}, allow_redirects=False, timeout=10)
        assert r.status_code == 303 and r.headers["Location"] == "/dashboard"
        page = requests.get(b.url + "/", headers={"Accept": html}, timeout=10)
        assert page.status_code == 200 and page.url.endswith("/dashboard") and "<html" in page.text.lower()
        r = requests.get(b.url + "/", headers={"Accept": "application/json"}, timeout=10)
        assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound"
        assert requests.post(b.url + "/", timeout=10).status_code in (404, 405)
        assert umbridge.supported_models(b.url) == ["forward"]  # the UM-Bridge client is unaffected
