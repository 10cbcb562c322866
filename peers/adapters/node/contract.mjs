// The peer contract's plumbing for Node programs (docs/peers.md): the NT_* environment,
// the rendezvous line mailbox, the payload and the one result line.
import net from 'node:net';
import readline from 'node:readline';

export const CONTRACT_VERSION = 1;
const started = performance.now();

function addr(text) {
  if (!text) return null;
  const i = text.lastIndexOf(':');
  return { ip: text.slice(0, i), port: Number(text.slice(i + 1)) };
}

export function contract(env = process.env) {
  if (!['controlling', 'controlled'].includes(env.NT_ROLE)) {
    throw new Error(`NT_ROLE=${env.NT_ROLE}: controlling or controlled`);
  }
  return {
    role: env.NT_ROLE, id: env.NT_ID, remote: env.NT_REMOTE,
    controlling: env.NT_ROLE === 'controlling',
    rendezvous: addr(env.NT_RENDEZVOUS), session: env.NT_SESSION,
    stun: addr(env.NT_STUN || ''), turn: addr(env.NT_TURN || ''),
    turnUser: env.NT_TURN_USER || '', turnPass: env.NT_TURN_PASS || '',
    relay: env.NT_RELAY || '',
    deadlineS: Number(env.NT_DEADLINE_S || 20),
    // connect by this; what is left of the deadline after it is the data phase's
    connectS: Number(env.NT_CONNECT_DEADLINE_S || env.NT_DEADLINE_S || 20),
    sendBytes: Number(env.NT_SEND_BYTES || 65536),
    chunk: Number(env.NT_CHUNK || 1000),
  };
}

export function elapsedMs() {
  return Math.round((performance.now() - started) * 10) / 10;
}

// The deadlines count from the process's start (performance.now()'s origin), as the
// testbed's clock does: it starts as the program is started, and Node's start-up and
// module loading (seconds on a loaded machine) are part of the program's time.

/** Milliseconds left before the deadline, less a margin to print the result. */
export function remainingMs(c) {
  return c.deadlineS * 1000 - 500 - performance.now();
}

/** Milliseconds left to connect (NT_CONNECT_DEADLINE_S): past it, give up. */
export function connectRemainingMs(c) {
  return Math.min(c.connectS * 1000, c.deadlineS * 1000 - 500) - performance.now();
}

/** Join the rendezvous: resolves to {send(obj), next() -> Promise<obj>, close()}. */
export function rendezvous(c) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(c.rendezvous.port, c.rendezvous.ip);
    const lines = readline.createInterface({ input: sock });
    const queue = [];
    const waiters = [];
    let joined = false;
    sock.on('error', (e) => { if (!joined) reject(e); else for (const w of waiters.splice(0)) w.reject(e); });
    sock.on('close', () => { for (const w of waiters.splice(0)) w.reject(new Error('rendezvous closed')); });
    lines.on('line', (line) => {
      if (!joined) {
        if (line !== 'OK') { reject(new Error(`rendezvous refused: ${line}`)); sock.destroy(); return; }
        joined = true;
        resolve({
          send: (obj) => sock.write(JSON.stringify(obj) + '\n'),
          next: () => (queue.length ? Promise.resolve(queue.shift())
            : new Promise((res, rej) => waiters.push({ resolve: res, reject: rej }))),
          close: () => sock.destroy(),
        });
        return;
      }
      const obj = JSON.parse(line);
      const w = waiters.shift();
      if (w) w.resolve(obj); else queue.push(obj);
    });
    sock.write(`HELLO ${c.session} ${c.id}\n`);
  });
}

/** The application data: sendBytes in chunks of at most `chunk` bytes. */
export function payload(c) {
  const out = [];
  const block = Buffer.from(`${c.id}:`.repeat(Math.ceil(c.chunk / (c.id.length + 1)) + 1));
  for (let left = c.sendBytes; left > 0; left -= c.chunk) {
    out.push(block.subarray(0, Math.min(c.chunk, left)));
  }
  return out;
}

/**
 * The end of the data phase (docs/peers.md): a program tells the other side through
 * the rendezvous that all its data arrived ({got: N}) and stays until the other side
 * says the same, so neither closes while data is still in flight either way (a data
 * channel's or a stream's buffers). `heard(m)` takes a rendezvous message (true if it
 * was this one's); `tell(n)` says how much arrived; `done` resolves once both sides
 * have all of the other's.
 */
export function completion(c) {
  let rv = null;
  let told = false;
  let theirs = false;
  let resolve;
  const done = new Promise((r) => { resolve = r; });
  const check = () => { if (told && theirs) resolve(); };
  return {
    done,
    use(r) { rv = r; },
    heard(m) {
      if (!m || !('got' in m)) return false;
      if (typeof m.got === 'number' && m.got >= c.sendBytes) { theirs = true; check(); }
      return true;
    },
    tell(n) { if (!told && n >= c.sendBytes && rv) { told = true; rv.send({ got: n }); check(); } },
  };
}

export function cand(type, ip, port, protocol) {
  return { type: type ?? null, ip: ip ?? null, port: port ?? null, protocol: protocol ?? null };
}

export function result(c, impl, version, outcome, pair, connectMs, sent, received, errors) {
  return {
    contract: CONTRACT_VERSION, impl, version, id: c.id, role: c.role, outcome,
    selected_pair: pair ? { local: pair[0], remote: pair[1] } : null,
    connect_ms: connectMs, sent_bytes: sent, received_bytes: received,
    errors: errors.slice(-10),
  };
}

/** The one result line, last on stdout; then exit (a stack may keep handles open). */
export function emitAndExit(res) {
  process.stdout.write(JSON.stringify(res) + '\n', () => process.exit(res.outcome === 'failed' ? 1 : 0));
}
