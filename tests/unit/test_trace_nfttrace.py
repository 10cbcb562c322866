"""testbed.trace.nfttrace: `nft monitor trace` text into one Trace per packet (no kernel).

Same scenario as test_trace_narrate: laptop 192.168.1.5 behind a router whose WAN
address is 203.0.113.50, talking to a server 203.0.113.10.
"""

from __future__ import annotations

from tracetext import DROP_STEPS, OUT_STEPS, trace_lines

from testbed.trace.nfttrace import parse_trace

LAPTOP, WAN, SERVER = "192.168.1.5", "203.0.113.50", "203.0.113.10"


def test_trace_payload_prefix_is_decoded_from_nfts_number() -> None:
    # nft prints the first 12 payload bytes 00 01 .. 0b as 0x102030405060708090a0b
    text = trace_lines("dd04", "wan", SERVER, 3478, WAN, 5000, 18444, bytes(range(200)),
                       DROP_STEPS)
    assert "@th,64,96 0x102030405060708090a0b " in text
    [t] = parse_trace(text)
    assert t.payload == bytes(range(12))
    assert (t.iif, t.src, t.sport, t.dst, t.dport, t.ip_id) == ("wan", SERVER, 3478, WAN, 5000,
                                                                18444)
    assert t.verdict == "drop" and t.decided_by is not None
    assert t.decided_by.chain == "input"


def test_reused_trace_id_starts_a_new_packet_and_interleaving_is_kept_apart() -> None:
    one = trace_lines("ee05", "wan", SERVER, 3478, WAN, 5000, 1, b"one", DROP_STEPS)
    two = trace_lines("ff06", "lan", LAPTOP, 5000, SERVER, 3478, 2, b"two", OUT_STEPS)
    three = trace_lines("ee05", "wan", SERVER, 3478, WAN, 5001, 3, b"three", DROP_STEPS)
    mixed = "\n".join(a for pair in zip(one.splitlines(), two.splitlines(), strict=False)
                      for a in pair) + "\n" + "\n".join(two.splitlines()[len(one.splitlines()):])
    traces = parse_trace(mixed + "\n" + three)
    assert [t.ip_id for t in traces] == [1, 2, 3]
    assert [t.verdict for t in traces] == ["drop", "forward", "drop"]


def test_a_trace_still_being_written_has_no_verdict() -> None:
    text = trace_lines("ab07", "wan", SERVER, 3478, WAN, 5000, 1, b"x", ["prerouting policy "
                                                                         "accept "])
    assert parse_trace(text)[0].verdict is None
