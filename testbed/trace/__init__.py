"""Watching a lab's packets: records and parsers (packets, nfttrace, captured), the live
capture (capture), what crossed each router (narrate), sequence diagrams (seqdiag) and
the trace folder (folder)."""
