// The Merkle tree in a worker, off the page's main thread, where pure-JS BLAKE3 would
// otherwise take turns with the network. It answers each batch with its length (the page
// bounds what is in flight by these) and the end of an item (`null`) with its root and the time
// it spent hashing it; then it starts on the next item.

import { MerkleBuilder } from './merkle'

let builder = new MerkleBuilder()
/** Milliseconds spent hashing this item: what the page reports as the speed of BLAKE3 here. */
let busy = 0

self.onmessage = (event: MessageEvent<Uint8Array | null>) => {
  const started = performance.now()
  if (event.data === null) {
    const root = builder.finish()
    self.postMessage({ root, busy: busy + performance.now() - started })
    builder = new MerkleBuilder()
    busy = 0
  } else {
    builder.update(event.data)
    busy += performance.now() - started
    self.postMessage({ hashed: event.data.length })
  }
}
