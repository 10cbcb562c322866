"""What a finished capture holds, and reading a capture folder back (pure: files only).

A capture folder holds one pcap per tapped interface (`<node>.<iface>.pcap`), one
`nft monitor trace` log per traced router (`<node>.nft-trace.txt`) and capture.json,
which names them, records each tap's MAC and every MAC of the lab (so a frame's
sender and receiver are known by node) and whether the capture was complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import LabError
from testbed.trace.nfttrace import Trace, parse_trace
from testbed.trace.packets import Packet, read_pcap

META_FILE = "capture.json"


@dataclass(frozen=True)
class Captured:
    """What a finished capture holds: packets per tap, traces per router."""

    out_dir: Path
    packets: Mapping[str, tuple[Packet, ...]]
    traces: Mapping[str, tuple[Trace, ...]]
    owners: Mapping[str, str]  # MAC -> node, for every interface of the lab
    complete: bool  # every pcap caught up with its interface counters, every trace in

    def of(self, node: str) -> dict[str, tuple[Packet, ...]]:
        """The taps of one node, by interface name."""
        return {t.split(":", 1)[1]: p for t, p in self.packets.items()
                if t.split(":", 1)[0] == node}


def load_capture(out_dir: str | Path) -> Captured:
    """Re-read a finished capture directory (pcaps, traces, capture.json)."""
    d = Path(out_dir)
    try:
        meta = json.loads((d / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise LabError(f"{d / META_FILE}: cannot read capture metadata: {exc}") from None
    packets = {tap: read_pcap(d / info["pcap"], tap, info["mac"])
               for tap, info in meta["taps"].items()}
    traces = {node: tuple(parse_trace((d / name).read_text(errors="replace")))
              for node, name in meta.get("traces", {}).items()}
    return Captured(d, packets, traces, dict(meta.get("owners", {})), bool(meta.get("complete")))
