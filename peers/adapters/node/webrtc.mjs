// Chrome's libwebrtc (through @roamhq/wrtc) as a contract program (docs/peers.md).
// The controlling side creates a data channel and the offer; the description
// ({type, sdp}) and then each candidate ({candidate}) go through the rendezvous as
// they come (trickle ICE: libwebrtc's gathering does not complete here). The
// application data goes over the data channel (DTLS + SCTP over the pair ICE selected).
import { createRequire } from 'node:module';
import * as k from './contract.mjs';

const require = createRequire(import.meta.url);
const wrtc = require('@roamhq/wrtc');
const VERSION = require('@roamhq/wrtc/package.json').version;
const c = k.contract();
const errors = [];
let sent = 0;
let received = 0;
let connectMs = null;
let finished = false;
const end = k.completion(c);
const pc = new wrtc.RTCPeerConnection({ iceServers: iceServers(), iceCandidatePoolSize: 0 });

function iceServers() {
  const out = [];
  if (c.stun) out.push({ urls: `stun:${c.stun.ip}:${c.stun.port}` });
  if (c.turn) {
    out.push({ urls: `turn:${c.turn.ip}:${c.turn.port}?transport=udp`,
      username: c.turnUser, credential: c.turnPass });
  }
  return out;
}

async function selectedPair() {
  const stats = await pc.getStats();
  let pairId = null;
  stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId; });
  let pair = pairId ? stats.get(pairId) : null;
  if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
  if (!pair) return null;
  const side = (id) => {
    const x = stats.get(id) || {};
    return k.cand(x.candidateType, x.address ?? x.ip, x.port, x.protocol);
  };
  return [side(pair.localCandidateId), side(pair.remoteCandidateId)];
}

let channel = null;

async function drained() {
  // dc.send only queues: closing with data queued would cut the remote's payload short
  while (channel && channel.readyState === 'open' && channel.bufferedAmount > 0 && k.remainingMs(c) > 0) {
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function finish(why) {
  if (finished) return;
  finished = true;
  if (why) errors.push(why);
  else await drained();
  let pair = null;
  try { pair = await selectedPair(); } catch (e) { errors.push(`getStats: ${e.message}`); }
  const ok = connectMs !== null && pair;
  const outcome = !ok ? 'failed' : (pair[0].type === 'relay' || pair[1].type === 'relay' ? 'relay' : 'direct');
  pc.close();
  k.emitAndExit(k.result(c, 'webrtc', VERSION, outcome, ok ? pair : null, connectMs, sent, received, errors));
}

function useChannel(dc) {
  channel = dc;
  dc.binaryType = 'arraybuffer';
  dc.bufferedAmountLowThreshold = 64 * 1024;
  let mark = 0;
  dc.onmessage = (ev) => {
    received += ev.data.byteLength ?? ev.data.length;
    if (received >= mark) { log(`data channel: ${received} B received`); mark += 16384; }
    end.tell(received);
  };
  dc.onclose = () => log(`data channel closed (${received} B received)`);
  dc.onopen = async () => {
    connectMs = k.elapsedMs();
    for (const chunk of k.payload(c)) {
      while (dc.bufferedAmount > 256 * 1024) {
        await new Promise((r) => { dc.onbufferedamountlow = r; });
      }
      dc.send(chunk);
      sent += chunk.length;
    }
    await drained();
    await end.done; // both sides have all of the other's: closing now loses nothing
    finish(null);
  };
}

setTimeout(() => finish('deadline reached'), Math.max(100, k.remainingMs(c)));
setTimeout(() => { if (connectMs === null) finish('not connected by the connect deadline'); },
  Math.max(100, k.connectRemainingMs(c)));
const log = (m) => console.error(`${k.elapsedMs()} ms ${c.id}: ${m}`);
pc.onicegatheringstatechange = () => log(`gathering ${pc.iceGatheringState}`);
pc.onicecandidate = (ev) => log(`candidate ${ev.candidate ? ev.candidate.candidate : 'end'}`);
pc.onconnectionstatechange = () => log(`connection ${pc.connectionState}`);
pc.oniceconnectionstatechange = () => {
  log(`ice ${pc.iceConnectionState}`);
  if (pc.iceConnectionState === 'failed') finish('ICE failed');
};

async function remoteMessages(rv) {
  for (;;) {
    const m = await rv.next();
    if (end.heard(m)) continue;
    if (m.candidate) await pc.addIceCandidate(m.candidate);
    else if (m.type === 'offer') {
      await pc.setRemoteDescription(m);
      await pc.setLocalDescription(await pc.createAnswer());
      rv.send({ type: pc.localDescription.type, sdp: pc.localDescription.sdp });
    } else if (m.type === 'answer') await pc.setRemoteDescription(m);
  }
}

try {
  const rv = await k.rendezvous(c);
  end.use(rv);
  pc.addEventListener('icecandidate', (ev) => {
    if (ev.candidate) rv.send({ candidate: ev.candidate.toJSON ? ev.candidate.toJSON() : ev.candidate });
  });
  if (c.controlling) {
    useChannel(pc.createDataChannel('nat-testbed'));
    await pc.setLocalDescription(await pc.createOffer());
    rv.send({ type: pc.localDescription.type, sdp: pc.localDescription.sdp });
  } else {
    pc.ondatachannel = (ev) => useChannel(ev.channel);
  }
  await remoteMessages(rv);
} catch (e) {
  finish(`${e.name}: ${e.message}`);
}
