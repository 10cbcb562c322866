// Loaded first (`node --import ./labshim.mjs`) by the libp2p adapter and relay. Two things:
//
// 1. js-libp2p 3 calls Promise.withResolvers (ES2024, Node >= 22); this machine's Node
//    is 20. The standard three-line polyfill, only where it is missing.
// 2. The lab's internet uses the documentation ranges (RFC 5737: 192.0.2.0/24,
//    198.51.100.0/24, 203.0.113.0/24), which @libp2p/utils counts as private: DCUtR
//    then never dials an observed address, and no hole punch is ever tried. A module
//    load hook removes exactly those three ranges from that one list; nothing else of
//    js-libp2p changes. The adapter reports it in its result line ("lab_shim").
import { register } from 'node:module';

if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => { resolve = res; reject = rej; });
    return { promise, resolve, reject };
  };
}
register('./labshim-hooks.mjs', import.meta.url);
