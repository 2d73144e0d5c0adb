"""Servers on several compute nodes, reached across hosts: each model server listens on its node's
cluster address (not on every interface), the launchers reach the control listener on the login
node's cluster address with the token, and nobody without it gets in: not a compute node without
the token on the control port, not a compute node or another Unix user on the client port."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

from tests.helpers import wait_until
from tests.multinode.fixture import MultiNodeCluster
from tests.multinode.helpers import Load, balancer, hosts_of, request_from, spec
from tests.system.test_peer_users import AS_OTHER, as_user
from tests.system.test_security import other_user

LISTENING = (
    "from balancer.control.exposure import exposed_addresses as e; import sys; print(e(int(sys.argv[1])))"
)


def test_servers_on_every_node_serve_under_load_and_strangers_are_refused(
    mn: MultiNodeCluster, tmp_path: Path
):
    # The client port on the login node's cluster address too: the peer check must refuse a compute
    # node's connection (its socket is in another namespace, so no UID: "another host").
    with balancer(mn, tmp_path, [spec(3)], host=mn.login_addr) as b:
        hosts = wait_until(lambda: len(hosts_of(b)) == 3 and hosts_of(b), 60, what="3 servers ready")
        assert sorted(hosts.values()) == sorted(n.addr for n in mn.nodes)  # one per node, at its address
        assert urlsplit(b.control_url).hostname == mn.login_addr
        with Load(b.url, threads=6) as load:
            wait_until(lambda: load.answered >= 150, 60, what="150 calls answered")
        assert not load.errors, load.errors[:5]
        used = {e["server"] for e in b.events("call.dispatched")}
        assert used == set(hosts)  # the calls went to every node

        for sid, addr in hosts.items():
            node = mn.node(addr)
            port = urlsplit(b.find("server.registered", server=sid)["url"]).port
            res = mn.in_node(node.name, [sys.executable, "-c", LISTENING, str(port)], check=True)
            assert res.stdout.split() == [json.dumps([addr]).replace('"', "'")]  # its address only

        # Why the address comes from the route: the node's host name (shared with the login side
        # here, as in a container) resolves to loopback, which a name-based rule would register.
        where = "import socket; from balancer.launcher.place import advertised_host as a; "
        where += f"print(a({b.control_url!r}), socket.gethostbyname(socket.getfqdn()))"
        res = mn.in_node(mn.nodes[1].name, [sys.executable, "-c", where], check=True)
        assert res.stdout.split() == [mn.nodes[1].addr, "127.0.0.1"]

        node = mn.nodes[0].name
        token = b.token()
        # The control listener from a compute node: without the token 401, with it served.
        doc = json.dumps({"server": "s99", "url": "http://10.0.0.9:1"})
        status, _ = request_from(mn, node, b.control_url + "/api/servers/register", "POST", doc)
        assert status == 401
        status, _ = request_from(mn, node, b.control_url + "/api/servers/s1/lease", "POST", "{}")
        assert status == 401
        auth = {"Authorization": f"Bearer {token}"}
        status, text = request_from(mn, node, b.control_url + "/api/servers/register", "POST", doc, **auth)
        assert status == 404 and json.loads(text)["reason"] == "unknown server"  # let in, then refused
        assert b.wait_event("auth.refused")["remote"] == mn.nodes[0].addr

        # The client port from a compute node: 403, no model runs.
        calls = len(b.events("call.received"))
        body = '{"name": "forward", "input": [[1.0]], "config": {}}'
        status, text = request_from(mn, node, b.url + "/Evaluate", "POST", body)
        assert status == 403 and "another host" in text
        assert b.wait_event("peer.refused", remote=mn.nodes[0].addr)
        # Another Unix user on the login node: 403 on every request, no model runs.
        uid, gid = other_user()
        for (method, path, _), (status, answer) in zip(
            AS_OTHER, as_user(uid, gid, b.url, AS_OTHER), strict=True
        ):
            assert status == 403, (method, path, status, answer)
            assert f"uid {uid}" in answer["error"]["message"]
        assert len(b.events("call.received")) == calls
