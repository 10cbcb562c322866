// js-libp2p's hole punching (DCUtR, over TCP) as a contract program (docs/peers.md).
// As in libp2p's hole-punch-interop: the controlled side (B, "listener") reserves a
// slot on the circuit relay (NT_RELAY) and sends its relayed address through the
// rendezvous; the controlling side (A, "dialer") dials it. DCUtR then upgrades the
// relayed connection to a direct one when it can. A waits up to half the deadline for
// a direct connection, else keeps the relayed one. The application data goes over a
// stream of DATA_PROTOCOL on the connection chosen: A writes its payload, B its own.
import { readFileSync } from 'node:fs';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2';
import { dcutr } from '@libp2p/dcutr';
import { identify } from '@libp2p/identify';
import { tcp } from '@libp2p/tcp';
import { multiaddr } from '@multiformats/multiaddr';
import { createLibp2p } from 'libp2p';
import * as k from './contract.mjs';

const version = (pkg) => JSON.parse(readFileSync(
  new URL(`./node_modules/${pkg}/package.json`, import.meta.url))).version;
const VERSION = version('libp2p');
const DCUTR_VERSION = version('@libp2p/dcutr');
const DATA_PROTOCOL = '/nat-testbed/data/1.0.0';
const c = k.contract();
const errors = [];
const log = (m) => console.error(`${k.elapsedMs()} ms ${c.id}: ${m}`);
let sent = 0;
let received = 0;
let connectMs = null;
let chosen = null;
let finished = false;
const end = k.completion(c);

const node = await createLibp2p({
  addresses: { listen: ['/ip4/0.0.0.0/tcp/0', ...(c.controlling ? [] : ['/p2p-circuit'])] },
  transports: [tcp(), circuitRelayTransport()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  connectionGater: { denyDialMultiaddr: () => false },
  services: { identify: identify(), dcutr: dcutr() },
});

const isRelayed = (conn) => conn.remoteAddr.toString().includes('/p2p-circuit');
node.addEventListener('connection:open', (ev) => log(`connection ${ev.detail.direction} ${ev.detail.remoteAddr}`));

function describe(conn) {
  if (!conn) return null;
  const parse = (ma) => {
    const o = ma.toOptions ? ma.toOptions() : {};
    return k.cand(isRelayed(conn) ? 'relay' : 'direct', o.host, o.port, o.transport);
  };
  const local = conn.localAddr ? parse(multiaddr(conn.localAddr.toString())) : k.cand('unknown');
  return [local, parse(conn.remoteAddr)];
}

async function finish(why) {
  if (finished) return;
  finished = true;
  if (why) errors.push(why);
  const outcome = connectMs === null || !chosen ? 'failed' : (isRelayed(chosen) ? 'relay' : 'direct');
  const res = k.result(c, 'libp2p', VERSION, outcome, outcome === 'failed' ? null : describe(chosen),
    connectMs, sent, received, errors);
  res.dcutr_version = DCUTR_VERSION;
  res.lab_shim = 'RFC 5737 documentation ranges treated as public (labshim.mjs)';
  try { await Promise.race([node.stop(), new Promise((r) => setTimeout(r, 500))]); } catch {}
  k.emitAndExit(res);
}
setTimeout(() => finish('deadline reached'), Math.max(100, k.remainingMs(c)));
setTimeout(() => { if (connectMs === null) finish('not connected by the connect deadline'); },
  Math.max(100, k.connectRemainingMs(c)));

async function readAll(source) {
  for await (const chunk of source) {
    received += chunk.byteLength;
    end.tell(received);
    if (received >= c.sendBytes) return;
  }
}

async function writeAll(stream) {
  for (const chunk of k.payload(c)) {
    await sendChunk(stream, chunk);
    sent += chunk.length;
  }
}

async function sendChunk(stream, chunk) {
  if (!stream.send(chunk)) await new Promise((r) => stream.addEventListener('drain', r, { once: true }));
}

async function useStream(stream, conn) {
  chosen = conn;
  connectMs = connectMs ?? k.elapsedMs();
  await Promise.all([writeAll(stream), readAll(stream)]);
  await end.done; // the other side has all of ours: stopping now loses nothing
  finish(null);
}

await node.handle(DATA_PROTOCOL, (a, b) => {
  // libp2p 3 passes (stream, connection); older majors passed ({stream, connection})
  const stream = a.stream ?? a;
  const conn = a.connection ?? b;
  log(`data stream from ${conn.remoteAddr}`);
  useStream(stream, conn).catch((e) => finish(`data: ${e.message}`));
}, { runOnLimitedConnection: true });

try {
  const rv = await k.rendezvous(c);
  end.use(rv);
  const relay = multiaddr(c.relay);
  if (!c.controlling) {
    await node.dial(relay);
    const circuit = await new Promise((resolve) => {
      const look = () => node.getMultiaddrs().find((m) => m.toString().includes('/p2p-circuit'));
      if (look()) return resolve(look());
      node.addEventListener('self:peer:update', () => { if (look()) resolve(look()); });
    });
    log(`reserved ${circuit}`);
    rv.send({ addr: circuit.toString() });
    (async () => { for (;;) end.heard(await rv.next()); })().catch(() => {});
  } else {
    let m = await rv.next();
    while (end.heard(m)) m = await rv.next();
    const { addr } = m;
    (async () => { for (;;) end.heard(await rv.next()); })().catch(() => {});
    const target = multiaddr(addr);
    const relayed = await node.dial(target);
    log(`relayed connection ${relayed.remoteAddr}`);
    const peer = relayed.remotePeer;
    const direct = await new Promise((resolve) => {
      const look = () => node.getConnections(peer).find((x) => !isRelayed(x));
      if (look()) return resolve(look());
      node.addEventListener('connection:open', () => { if (look()) resolve(look()); });
      setTimeout(() => resolve(null), Math.max(1000, k.connectRemainingMs(c) / 2));
    });
    const conn = direct ?? relayed;
    if (!direct) errors.push('no direct connection: DCUtR did not upgrade the relayed one');
    const stream = await conn.newStream(DATA_PROTOCOL, { runOnLimitedConnection: true });
    await useStream(stream, conn);
  }
} catch (e) {
  finish(`${e.name}: ${e.message}`);
}
