"""The port-mapping daemon's rendered configuration (testbed.portmap), per router."""

from __future__ import annotations

from testbed import resources
from testbed.portmap import daemon_config, quota_ranges, render_config, render_table
from testbed.topology import load_topology

TOPO = load_topology(resources.topology_file("port-forward"))


def test_config_for_the_port_forward_lab() -> None:
    cfg = daemon_config(TOPO, TOPO.node("home-a"), "lab1")
    assert cfg.stun == ("203.0.113.3", 3478) and cfg.hosts == ("192.168.1.10",)
    text = render_config(cfg)
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert "ext_ifname=wan" in lines and "listening_ip=lan" in lines
    assert "ext_perform_stun=yes" in lines and "ext_stun_host=203.0.113.3" in lines
    assert "enable_natpmp=yes" in lines and "enable_upnp=yes" in lines
    assert "secure_mode=yes" in lines
    # the quota of 4: Alice's own external ports, then nobody else anything
    assert lines[-2:] == ["allow 20000-20003 192.168.1.10/32 1-65535",
                          "deny 0-65535 0.0.0.0/0 0-65535"]
    assert quota_ranges(cfg) == {"192.168.1.10": [20000, 20003]}
    assert render_config(cfg) == text  # the uuid is stable per lab and router
    assert render_config(daemon_config(TOPO, TOPO.node("home-a"), "lab2")) != text


def test_the_daemons_table_names_the_chains_of_its_configuration() -> None:
    table = render_table()
    text = render_config(daemon_config(TOPO, TOPO.node("home-a"), "lab1"))
    for key in ("upnp_forward_chain", "upnp_nat_chain", "upnp_nat_postrouting_chain"):
        chain = next(ln.split("=")[1] for ln in text.splitlines() if ln.startswith(key))
        assert f"chain {chain} {{" in table and f"jump {chain}" in table
    assert "policy accept" in table and "policy drop" not in table
