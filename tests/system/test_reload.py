"""Live configuration reload (issue 13) against a real ``balancer serve`` with real model servers.

Under a steady load from several threads with the official umbridge client, a reload adds a spec,
removes specs, replaces a spec's servers one by one and resizes a spec; no call is lost. An invalid
reload changes nothing and says why; SIGHUP, ``balancer reload`` and ``POST /api/reload`` do the same.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import umbridge

from tests.helpers import MODELS, ROOT, BalancerProc, test_model_spec, wait_until

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

pytestmark = pytest.mark.timeout(180)

TESTMODEL = [sys.executable, str(MODELS / "testmodel.py")]
DOWN = ("server.draining", "server.stopping", "server.failed", "server.stopped")


# -- driving the balancer ----------------------------------------------------------------------------
def cli(*args: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "balancer.cli", *args, "--run-dir", str(run_dir)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)


def read_cfg(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def write_cfg(path: Path, cfg: dict[str, Any]) -> None:
    path.write_text(tomli_w.dumps(cfg))


def spec_in(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in cfg["servers"] if s["name"] == name)


def api(b: BalancerProc, method: str, path: str, body: Any = None, token: bool = True) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(b.url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {b.token()}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def reloaded_events(b: BalancerProc) -> list[dict[str, Any]]:
    return b.events("config.reloaded")


def reload_cli(b: BalancerProc, *args: str) -> dict[str, Any]:
    """``balancer reload``: exit 0, one ``balancer: reloaded`` line; returns its journal line."""
    n = len(reloaded_events(b))
    out = cli("reload", *args, run_dir=b.run_dir)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stdout.startswith("balancer: reloaded"), out.stdout
    return wait_until(lambda: reloaded_events(b)[n:], 10, what="config.reloaded")[0]


# -- reading the journal -----------------------------------------------------------------------------
def spec_of(evs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["server"]: e["spec"] for e in evs if e["ev"] == "server.requested"}


def walk_ready(evs: list[dict[str, Any]], spec: str, upto: int | None = None) -> set[str]:
    """The servers of ``spec`` that are ready (ready and not yet draining/stopping/failed/stopped)
    after the first ``upto`` journal lines (all of them by default)."""
    owner = spec_of(evs)
    ready: set[str] = set()
    for e in evs[:upto]:
        sid = e.get("server")
        if owner.get(sid) != spec:
            continue
        if e["ev"] == "server.ready":
            ready.add(sid)
        elif e["ev"] in DOWN:
            ready.discard(sid)
    return ready


def ready_of(b: BalancerProc, spec: str) -> set[str]:
    return walk_ready(b.events(), spec)


def index_of(evs: list[dict[str, Any]], ev: dict[str, Any]) -> int:
    return next(i for i, e in enumerate(evs) if e["ev"] == ev["ev"] and e["m"] == ev["m"] and e == ev)


def fewest_ready_after(evs: list[dict[str, Any]], spec: str, start: int, end: int) -> tuple[int, int]:
    """(ready servers of ``spec`` at journal line ``start``, fewest ready at any line up to ``end``)."""
    owner = spec_of(evs)
    ready = walk_ready(evs, spec, start)
    at_start = fewest = len(ready)
    for e in evs[start:end]:
        sid = e.get("server")
        if owner.get(sid) != spec:
            continue
        if e["ev"] == "server.ready":
            ready.add(sid)
        elif e["ev"] in DOWN and sid in ready:
            ready.discard(sid)
            fewest = min(fewest, len(ready))
    return at_start, fewest


def calls_failed_except(b: BalancerProc, model: str) -> list[dict[str, Any]]:
    model_of = {e["call"]: e["model"] for e in b.events("call.received")}
    return [e for e in b.events("call.failed") if model_of.get(e["call"]) != model]


# -- the load ----------------------------------------------------------------------------------------
class Load:
    """``threads`` clients calling ``forward([[x]])`` back to back; every answer is checked against the
    factors the pool may answer with right now. Failures are counted per phase (the change under way)."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.factors = {2.0}
        self.phase = "start"
        self.ok = 0
        self.calls: dict[str, int] = {}
        self.lost: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def set_phase(self, phase: str) -> None:
        with self.lock:
            self.phase = phase
            self.calls.setdefault(phase, 0)
            self.lost.setdefault(phase, [])

    def _run(self, i: int) -> None:
        model = umbridge.HTTPModel(self.url, "forward")
        k = 0
        while not self.done.is_set():
            k += 1
            x = float(1000 * (i + 1) + k % 1000)
            phase = self.phase
            try:
                out = model([[x]])
                good = out[0][0] / x in self.factors
                why = "" if good else f"answer {out} to {x}, expected a factor in {self.factors}"
            except Exception as exc:  # every failure counts as a lost call
                why = f"{type(exc).__name__}: {exc}"
            with self.lock:
                self.calls[phase] = self.calls.get(phase, 0) + 1
                if why:
                    self.lost.setdefault(phase, []).append(why)
                else:
                    self.ok += 1

    def more(self, n: int = 20, timeout: float = 30) -> None:
        """Wait for ``n`` more answered calls (the load runs on)."""
        start = self.ok
        wait_until(lambda: self.ok >= start + n, timeout, what=f"{n} more calls under load")

    def close(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a client call never returned"


def post_in_background(url: str, model: str) -> tuple[threading.Thread, list[Any]]:
    """A raw ``/Evaluate`` of ``model`` in a thread; its (status, document) lands in the list."""
    result: list[Any] = []

    def run() -> None:
        body = json.dumps({"name": model, "input": [[1.0]], "config": {}}).encode()
        req = urllib.request.Request(url + "/Evaluate", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                result.append((resp.status, json.loads(resp.read())))
        except urllib.error.HTTPError as exc:
            result.append((exc.code, json.loads(exc.read())))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


# -- under load ----------------------------------------------------------------------------------------
def test_add_remove_replace_and_resize_under_load_lose_no_call(start_balancer):
    delay = {"TEST_DELAY": "30"}
    a = test_model_spec("a", models=["forward"], min_servers=2, max_servers=2, idle_timeout_s=2.0, env=delay)
    bb = test_model_spec("b", models=["forward"], min_servers=1, max_servers=1, env=delay)
    b = start_balancer([a, bb])
    wait_until(lambda: len(ready_of(b, "a")) == 2 and len(ready_of(b, "b")) == 1, 60, what="3 servers")
    load = Load(b.url, threads=4)
    try:
        load.more()

        # 1. Add: a spec whose model is discovered from its first server, and one that lists its
        #    model but whose server never listens (a call for it waits).
        load.set_phase("add")
        cfg = read_cfg(b.config)
        waiter = {"name": "w", "command": [sys.executable, str(MODELS / "waiter.py")],
                  "env": {"WAITER_S": "0.01"}, "min_servers": 1, "max_servers": 1}  # fmt: skip
        lonely = {"name": "lonely", "command": [sys.executable, "-c", "import time; time.sleep(600)"],
                  "models": ["lonely"], "max_servers": 1, "startup_timeout_s": 600.0}  # fmt: skip
        cfg["servers"] += [waiter, lonely]
        write_cfg(b.config, cfg)
        r = reload_cli(b)
        assert (set(r["added"]), r["removed"], r["trigger"]) == ({"w", "lonely"}, [], "api"), r
        assert r["path"] == str(b.config) and re.fullmatch(r"[0-9a-f]{12}", r["hash"]), r
        listed = lambda: {"waiter", "lonely"} <= set(umbridge.supported_models(b.url))  # noqa: E731
        wait_until(listed, 60, what="/Info lists the new models")
        assert 0.0 <= umbridge.HTTPModel(b.url, "waiter")([[1.0]])[0][0] < 5.0
        lonely_call, lonely_result = post_in_background(b.url, "lonely")
        starting = b.wait_event("server.requested", spec="lonely")["server"]
        b.wait_event("server.started", server=starting)
        # A server still starting when its spec changes is stopped, never made ready; the call waits on.
        lonely["env"] = {"LONELY_BUILD": "2"}
        write_cfg(b.config, cfg)
        r = reload_cli(b)
        assert r["changed"] == {"lonely": ["env"]}, r
        b.wait_event("server.stopped", server=starting)
        successor = lambda: [s for s, sp in spec_of(b.events()).items() if sp == "lonely" and s != starting]  # noqa: E731
        wait_until(successor, 30, what="a new server for the waiting call")
        load.more()

        # 2. Remove b (a serves its model too) and lonely (nobody else serves "lonely").
        load.set_phase("remove")
        b_servers = ready_of(b, "b")
        lonely_servers = [s for s, sp in spec_of(b.events()).items() if sp == "lonely"]
        assert not lonely_call.join(0) and not lonely_result, "the lonely call must still wait"
        cfg["servers"] = [s for s in cfg["servers"] if s["name"] not in ("b", "lonely")]
        write_cfg(b.config, cfg)
        r = reload_cli(b)
        assert (set(r["removed"]), r["added"]) == ({"b", "lonely"}, []), r
        lonely_call.join(30)
        assert lonely_result, "the call waiting for a removed spec's model got no answer"
        status, doc = lonely_result[0]
        assert status == 503, lonely_result
        assert "server spec 'lonely' was removed by a config reload" in doc["error"]["message"], doc
        for sid in b_servers | set(lonely_servers):
            b.wait_event("server.stopped", server=sid)
        evs = b.events()
        for sid in b_servers:
            drain = b.find("server.draining", server=sid)
            assert drain and re.search(r"removed by (a )?config reload", drain["reason"]), drain
            cut = index_of(evs, drain)
            # No new call after the drain; every call it had then finished (none failed, see below).
            assert not [e for e in evs[cut:] if e["ev"] == "call.dispatched" and e["server"] == sid]
            had = {e["call"] for e in evs[:cut] if e["ev"] == "call.dispatched" and e["server"] == sid}
            done = {e["call"] for e in evs if e["ev"] == "call.completed"}
            assert had <= done, had - done
        assert not [e for e in b.events("server.ready") if e["server"] in lonely_servers]
        load.more()

        # 3. Change a's command: a rolling replacement, never fewer ready servers than at the reload.
        load.set_phase("replace")
        old = ready_of(b, "a")
        load.factors = {2.0, 3.0}
        spec_in(cfg, "a")["command"] = ["env", "TEST_FACTOR=3", *TESTMODEL]
        write_cfg(b.config, cfg)
        r = reload_cli(b)
        assert "command" in r["changed"]["a"] and r["replacing"] == {"a": 2}, r
        for sid in old:
            b.wait_event("server.stopped", server=sid, timeout=60)
        wait_until(lambda: len(ready_of(b, "a")) == 2, 60, what="2 new servers of a")
        load.factors = {3.0}  # every old server has stopped: only the new command answers
        evs = b.events()
        at = index_of(evs, r)
        at_reload, fewest = fewest_ready_after(evs, "a", at, len(evs))
        assert (at_reload, fewest) == (2, 2), f"ready servers of a: {at_reload} at the reload, then {fewest}"
        early = [e["server"] for e in evs[:at] if e["ev"] == "server.requested" and e["spec"] == "a"
                 and e["reason"] == "rollout"]  # fmt: skip
        assert not early, f"rollout servers {early} journaled before their config.reloaded line"
        new = [e["server"] for e in evs[at:] if e["ev"] == "server.requested" and e["spec"] == "a"]
        assert len(new) >= 2 and all(
            e["reason"] == "rollout" for e in evs[at:] if e["ev"] == "server.requested" and e["spec"] == "a"
        )
        assert ready_of(b, "a") <= set(new)
        first_new_ready = min(
            i for i, e in enumerate(evs) if e["ev"] == "server.ready" and e["server"] in new
        )
        drains = [(i, e) for i, e in enumerate(evs) if e["ev"] == "server.draining" and e["server"] in old]
        assert drains and all(e["reason"] == "replaced by config reload" for _, e in drains), drains
        assert first_new_ready < min(i for i, _ in drains)
        load.more()

        # 4. Raise max_servers: the pool grows under load at once, nothing is replaced.
        load.set_phase("raise max_servers")
        spec_in(cfg, "a")["max_servers"] = 4
        write_cfg(b.config, cfg)
        r = reload_cli(b)
        assert r["changed"] == {"a": ["max_servers"]} and not r["replacing"], r
        wait_until(lambda: len(ready_of(b, "a")) == 4, 60, what="4 ready servers of a")
        load.more()

        # 5. Lower it (and min_servers) to 1: the ready servers fall to 1, no call fails.
        load.set_phase("lower max_servers")
        spec_in(cfg, "a").update(min_servers=1, max_servers=1)
        write_cfg(b.config, cfg)
        r = reload_cli(b)
        assert list(r["changed"]) == ["a"] and set(r["changed"]["a"]) == {"max_servers", "min_servers"}, r
        assert not r["replacing"], r
        wait_until(lambda: len(ready_of(b, "a")) == 1, 60, what="1 ready server of a")
        load.more()
        evs = b.events()
        at = index_of(evs, reloaded_events(b)[-2])  # limits only: no server was replaced since
        assert not [e for e in evs[at:] if e["ev"] == "server.requested" and e["reason"] == "rollout"]
    finally:
        load.close()
    lost = {phase: len(why) for phase, why in load.lost.items()}
    print(f"\nreload under load: calls per change {load.calls}, calls lost per change {lost}")
    assert not any(lost.values()), load.lost
    assert not calls_failed_except(b, "lonely"), calls_failed_except(b, "lonely")
    assert not b.events("call.requeued"), "a server stopped in the middle of a call"
    assert b.stop() == 0


# -- invalid reloads -----------------------------------------------------------------------------------
def test_an_invalid_reload_changes_nothing_and_says_why(start_balancer):
    b = start_balancer([test_model_spec(models=["forward"], min_servers=1, max_servers=2)])
    sid = b.wait_event("server.ready")["server"]
    model = umbridge.HTTPModel(b.url, "forward")
    assert model([[1.0]]) == [[2.0]]
    good = b.config.read_text()
    before = api(b, "GET", "/api/status")[1]
    requested = len(b.events("server.requested"))

    # Each bad file also carries a change that would apply on its own (max_servers, a new spec).
    def bad(mutate) -> None:
        cfg = tomllib.loads(good)
        cfg["servers"][0]["max_servers"] = 3
        cfg["servers"].append(test_model_spec("extra", models=["extra"], min_servers=1))
        mutate(cfg)
        write_cfg(b.config, cfg)

    bad(lambda cfg: cfg["servers"][0].update(bogus=1))
    out = cli("reload", run_dir=b.run_dir)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "bogus" in lines[0], out.stderr
    assert "Traceback" not in out.stderr and not out.stdout.startswith("balancer: reloaded")

    bad(lambda cfg: cfg["balancer"].update(port=1))
    out = cli("reload", run_dir=b.run_dir)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "balancer.port" in lines[0], out.stderr
    assert "cannot change while running" in lines[0], lines

    status, doc = api(b, "POST", "/api/reload", {})
    assert status == 400 and doc["error"]["type"] == "InvalidInput", (status, doc)
    assert doc["error"]["message"].startswith("config error: balancer.port"), doc

    b.config.write_text(good + "\n[balancer\n")  # a TOML syntax error
    status, doc = api(b, "POST", "/api/reload", {"path": str(b.config)})
    assert status == 400 and doc["error"]["message"].startswith("config error"), (status, doc)
    assert api(b, "POST", "/api/reload", {}, token=False)[0] == 401

    rejected = b.events("config.rejected")
    assert [e["trigger"] for e in rejected] == ["api"] * 4, rejected
    assert "bogus" in rejected[0]["reason"] and "balancer.port" in rejected[1]["reason"], rejected
    assert all(e["path"] == str(b.config) for e in rejected) and rejected[0]["who"], rejected
    assert not reloaded_events(b)

    # Nothing changed: the same server, the same limits, no new spec, no start.
    after = api(b, "GET", "/api/status")[1]
    assert set(after["specs"]) == set(before["specs"]) == {"testmodel"}
    for key in ("min_servers", "max_servers", "backlog", "servers"):
        assert after["specs"]["testmodel"][key] == before["specs"]["testmodel"][key], key
    assert ready_of(b, "testmodel") == {sid} and len(b.events("server.requested")) == requested
    conf = after["config"]
    assert (conf["reloads"], conf["rejected"], conf["hash"]) == (0, 4, before["config"]["hash"]), conf
    assert "config error" in conf["last_rejected"], conf
    assert model([[2.0]]) == [[4.0]]
    out = cli("status", run_dir=b.run_dir)
    line = next((x for x in out.stdout.splitlines() if x.startswith("config:")), "")
    assert str(b.config) in line and conf["hash"] in line, out.stdout
    assert b.stop() == 0


# -- three triggers, one behaviour; the metadata cache ----------------------------------------------
def test_sighup_cli_and_api_reload_alike_and_metadata_follows_the_new_servers(start_balancer, tmp_path):
    b = start_balancer([test_model_spec(models=["forward"], min_servers=1, max_servers=1)])
    first = b.wait_event("server.ready")["server"]
    model = umbridge.HTTPModel(b.url, "forward")
    assert model.get_input_sizes() == [1]  # answered once, then cached by the balancer
    assert model.get_input_sizes() == [1]

    def replaced(old: set[str]) -> set[str]:
        for sid in old:
            b.wait_event("server.stopped", server=sid, timeout=60)
        return wait_until(lambda: ready_of(b, "testmodel"), 60, what="a new ready server")

    # SIGHUP: re-reads the serve --config file; a changed env replaces the server.
    cfg = read_cfg(b.config)
    cfg["servers"][0]["env"] = {"TEST_INPUT_SIZES": "3"}
    write_cfg(b.config, cfg)
    b.proc.send_signal(signal.SIGHUP)
    by_signal = b.wait_event("config.reloaded", trigger="signal", timeout=20)
    second = replaced({first})
    assert model.get_input_sizes() == [3], "the cached InputSizes of the old servers was kept"
    assert model([[1.0, 0.0, 0.0]]) == [[2.0]]

    # balancer reload --config OTHER: the same change the same way; OTHER becomes the current path.
    other = b.config.parent / "other.toml"  # beside it: the servers' cwd (the file's directory) stays
    cfg["servers"][0]["env"] = {"TEST_INPUT_SIZES": "2"}
    write_cfg(other, cfg)
    by_cli = reload_cli(b, "--config", os.path.relpath(other, ROOT))  # relative to the CLI's cwd
    third = replaced(second)
    assert model.get_input_sizes() == [2]
    assert by_cli["path"] == str(other.resolve()) and by_signal["path"] == str(b.config)
    for r in (by_signal, by_cli):
        assert (r["added"], r["removed"], r["settings"]) == ([], [], []), r
        assert r["changed"] == {"testmodel": ["env"]} and r["replacing"] == {"testmodel": 1}, r
    per_trigger = ("t", "m", "trigger", "who", "remote", "path", "hash")
    same = lambda e: {k: v for k, v in e.items() if k not in per_trigger}  # noqa: E731
    assert same(by_signal) == same(by_cli) and set(by_signal) == set(by_cli)
    assert by_cli["who"]
    evs = b.events()
    for r, old in ((by_signal, {first}), (by_cli, second)):
        at = index_of(evs, r)
        got = [e["reason"] for e in evs[at:] if e["ev"] == "server.requested"][:1]
        assert got == ["rollout"], f"no rollout server journaled after {r}"
        assert [e["reason"] for e in evs[at:] if e["ev"] == "server.draining" and e["server"] in old] == [
            "replaced by config reload"
        ]

    # POST /api/reload without a path re-reads OTHER now; a limit applies, nothing is replaced.
    cfg["servers"][0]["max_servers"] = 2
    cfg["balancer"]["lease_s"] = 20.0
    write_cfg(other, cfg)
    status, doc = api(b, "POST", "/api/reload", {})
    assert status == 200 and doc["ok"] is True and doc["path"] == str(other.resolve()), doc
    assert doc["changed"] == {"testmodel": ["max_servers"]} and not doc["replacing"], doc
    assert doc["settings"] == ["balancer.lease_s"], doc
    assert api(b, "GET", "/api/status")[1]["specs"]["testmodel"]["max_servers"] == 2
    # ... and so does SIGHUP (the current path is OTHER now), here with nothing to change.
    b.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(b.events("config.reloaded")) == 4, 20, what="the second SIGHUP")
    last = b.events("config.reloaded")[-1]
    assert (last["trigger"], last["path"], last["changed"]) == ("signal", str(other.resolve()), {}), last
    assert ready_of(b, "testmodel") == third
    conf = api(b, "GET", "/api/status")[1]["config"]
    assert (conf["path"], conf["hash"], conf["reloads"], conf["rejected"]) == (
        str(other.resolve()), last["hash"], 4, 0,
    ), conf  # fmt: skip
    assert conf["last_rejected"] is None and conf["age_s"] >= 0 and conf["loaded_at"] > 0
    assert b.stop() == 0


# -- a full machine: the successor cannot start beside its predecessor -------------------------------
def test_a_rollout_on_a_full_machine_lets_the_old_server_go_first(start_balancer):
    """One GPU (``[backend] gpus``, no device needed), held by the one server: its successor is
    deferred, so the old server drains first (one ready server fewer, for a moment) and no call is
    lost; the successor then gets the GPU instead of waiting into its start-up timeout."""
    spec = test_model_spec(models=["forward"], min_servers=1, max_servers=1, resources={"gpus": 1})
    b = start_balancer([spec], backend={"gpus": [0]})
    old = b.wait_event("server.ready")["server"]
    load = Load(b.url, threads=2)
    try:
        load.set_phase("gpu rollout")
        load.more(10)
        cfg = read_cfg(b.config)
        cfg["servers"][0]["env"] = {"TEST_FACTOR": "3"}
        write_cfg(b.config, cfg)
        with load.lock:
            load.factors = {2.0, 3.0}
        reload_cli(b)
        deferred = b.wait_event("server.deferred", timeout=30)
        drained = b.wait_event("server.draining", server=old, timeout=30)
        assert drained["reason"] == "replaced by config reload", drained
        b.wait_event("server.ready", server=deferred["server"], timeout=60)
        load.more(10, timeout=60)
    finally:
        load.close()
    print(f"calls during the GPU rollout: {load.calls}, lost: {load.lost}")
    assert load.lost == {"gpu rollout": []}, load.lost
    assert not b.events("call.failed") and not b.events("server.failed")
    assert b.stop() == 0
