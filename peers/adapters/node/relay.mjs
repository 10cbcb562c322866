// A js-libp2p circuit relay v2 node on the lab's internet, in place of TURN for the
// libp2p adapter. Listens on NT_LISTEN (IP:PORT, TCP); prints "ready <multiaddr>".
// Relayed connections are not limited, so a pair whose hole punch fails can still
// exchange its data through the relay (what a TURN fallback does for ICE).
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { circuitRelayServer } from '@libp2p/circuit-relay-v2';
import { identify } from '@libp2p/identify';
import { tcp } from '@libp2p/tcp';
import { createLibp2p } from 'libp2p';

const [ip, port] = process.env.NT_LISTEN.split(':');
const node = await createLibp2p({
  addresses: { listen: [`/ip4/${ip}/tcp/${port}`], announce: [`/ip4/${ip}/tcp/${port}`] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    relay: circuitRelayServer({ reservations: { maxReservations: 64, applyDefaultLimit: false } }),
  },
});
const ma = node.getMultiaddrs().find((m) => m.toString().includes(ip));
console.log(`ready ${ma.toString()}`);
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => node.stop().finally(() => process.exit(0)));
