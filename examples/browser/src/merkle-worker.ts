// The Merkle tree in a worker, off the page's main thread, where pure-JS BLAKE3 would
// otherwise take turns with the network. It answers each batch with its length (the page
// bounds what is in flight by these) and the end (`null`) with the root and the time it
// spent hashing.

import { MerkleBuilder } from './merkle'

const builder = new MerkleBuilder()
/** Milliseconds spent hashing: what the page reports as the speed of BLAKE3 here. */
let busy = 0

self.onmessage = (event: MessageEvent<Uint8Array | null>) => {
  const started = performance.now()
  if (event.data === null) {
    const root = builder.finish()
    busy += performance.now() - started
    self.postMessage({ root, busy })
  } else {
    builder.update(event.data)
    busy += performance.now() - started
    self.postMessage({ hashed: event.data.length })
  }
}
