// The Merkle tree in a worker, off the page's main thread, where pure-JS BLAKE3 would
// otherwise take turns with the network. It answers each batch with its length (the page
// bounds what is in flight by these) and the end (`null`) with the root.

import { MerkleBuilder } from './merkle'

const builder = new MerkleBuilder()

self.onmessage = (event: MessageEvent<Uint8Array | null>) => {
  if (event.data === null) {
    self.postMessage({ root: builder.finish() })
  } else {
    builder.update(event.data)
    self.postMessage({ hashed: event.data.length })
  }
}
