// The Merkle tree in a worker, off the page's main thread, where hashing would otherwise
// take turns with the network. It answers each batch with its length (the page bounds what
// is in flight by these) and the end of an item (`null`) with its root and the time it
// spent hashing it; then it starts on the next item.

import { type LeafHash, MerkleBuilder, jsLeafHash, wasmLeafHash } from './merkle'

// Leaves in WebAssembly: the page's transfers were bound by pure-JS hashing. Where
// WebAssembly cannot start, the leaves go through JS, slower but the same tree.
const leafHash: Promise<LeafHash> = wasmLeafHash().catch((error: unknown) => {
  console.warn('BLAKE3 in WebAssembly is not available; hashing in JS', error)
  return jsLeafHash
})
let builder: MerkleBuilder | undefined
/** Milliseconds spent hashing this item: what the page reports as the speed of BLAKE3 here. */
let busy = 0
/**
 * Messages handled one after another: the handler is set at once, so that no message
 * arrives before it, and the first waits for the WebAssembly module.
 */
let handled = Promise.resolve()

self.onmessage = (event: MessageEvent<Uint8Array | null>) => {
  handled = handled.then(() => handle(event.data))
}

async function handle(data: Uint8Array | null): Promise<void> {
  builder ??= new MerkleBuilder(await leafHash)
  const started = performance.now()
  if (data === null) {
    const root = builder.finish()
    self.postMessage({ root, busy: busy + performance.now() - started })
    builder = undefined
    busy = 0
  } else {
    builder.update(data)
    busy += performance.now() - started
    self.postMessage({ hashed: data.length })
  }
}
