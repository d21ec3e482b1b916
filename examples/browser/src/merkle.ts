// The Merkle tree of docs/design.md §4, built with @noble/hashes' BLAKE3: a second implementation,
// independent of the Rust `blake3` crate the nodes use, so that a root the page and a node
// agree on is evidence, not an echo. Leaves, nearly all of the work, can go through
// hash-wasm's BLAKE3 in WebAssembly instead (`wasmLeafHash`), several times faster than
// pure JS; inner nodes stay with @noble/hashes, since they use BLAKE3's derive-key mode,
// which hash-wasm's BLAKE3 (hashing and keyed hashing only) cannot express.

import { blake3 } from '@noble/hashes/blake3.js'
import { bytesToHex } from '@noble/hashes/utils.js'
import { createBLAKE3 } from 'hash-wasm'

/** Bytes per leaf. */
export const CHUNK_SIZE = 7168

const NODE_CONTEXT = new TextEncoder().encode('posemesh domain merkle node v1')

/** The hash of one leaf: plain BLAKE3 of its chunk. */
export type LeafHash = (chunk: Uint8Array) => Uint8Array

/** BLAKE3 in pure JS (@noble/hashes). */
export const jsLeafHash: LeafHash = (chunk) => blake3(chunk)

/** BLAKE3 in WebAssembly (hash-wasm); instantiating the module is asynchronous. */
export async function wasmLeafHash(): Promise<LeafHash> {
  const hasher = await createBLAKE3()
  return (chunk) => hasher.init().update(chunk).digest('binary')
}

/** A perfect subtree: its root and how many leaves it covers. */
interface Subtree {
  hash: Uint8Array
  leaves: number
}

/** The derive-key hasher with the context already hashed: each node clones it (5.7 µs a node
 * in Node.js, against 8 µs hashing the context again). */
const NODE_HASHER = blake3.create({ context: NODE_CONTEXT })

function parent(left: Uint8Array, right: Uint8Array): Uint8Array {
  const pair = new Uint8Array(64)
  pair.set(left)
  pair.set(right, 32)
  return NODE_HASHER.clone().update(pair).digest()
}

/**
 * Builds the root while bytes stream in, in O(log n) memory: a stack of perfect subtrees of
 * decreasing size, merged like the carries of a binary counter. Folding the stack from the
 * right at the end gives RFC 9162's shape (the left subtree holds the largest power of two
 * smaller than n leaves).
 */
export class MerkleBuilder {
  private readonly stack: Subtree[] = []
  private readonly pending = new Uint8Array(CHUNK_SIZE)
  private pendingLength = 0
  private leafCount = 0
  private byteCount = 0

  constructor(private readonly leafHash: LeafHash = jsLeafHash) {}

  /** Bytes taken so far. */
  get length(): number {
    return this.byteCount
  }

  update(data: Uint8Array): void {
    this.byteCount += data.length
    let offset = 0
    if (this.pendingLength > 0) {
      const taken = Math.min(CHUNK_SIZE - this.pendingLength, data.length)
      this.pending.set(data.subarray(0, taken), this.pendingLength)
      this.pendingLength += taken
      offset = taken
      if (this.pendingLength === CHUNK_SIZE) {
        this.pushLeaf(this.pending)
        this.pendingLength = 0
      }
    }
    // Whole chunks are hashed where they lie, without a copy.
    while (data.length - offset >= CHUNK_SIZE) {
      this.pushLeaf(data.subarray(offset, offset + CHUNK_SIZE))
      offset += CHUNK_SIZE
    }
    if (offset < data.length) {
      this.pending.set(data.subarray(offset), 0)
      this.pendingLength = data.length - offset
    }
  }

  /** The root, as the 64 lowercase hex characters of `Metadata.hash`. */
  finish(): string {
    // Empty data has one leaf, the empty chunk; a short last chunk is a leaf of its own.
    if (this.pendingLength > 0 || this.leafCount === 0) {
      this.pushLeaf(this.pending.subarray(0, this.pendingLength))
      this.pendingLength = 0
    }
    let root = this.stack[this.stack.length - 1]!.hash
    for (let i = this.stack.length - 2; i >= 0; i--) {
      root = parent(this.stack[i]!.hash, root)
    }
    return bytesToHex(root)
  }

  private pushLeaf(chunk: Uint8Array): void {
    let subtree: Subtree = { hash: this.leafHash(chunk), leaves: 1 }
    this.leafCount += 1
    while (this.stack.length > 0 && this.stack[this.stack.length - 1]!.leaves === subtree.leaves) {
      const left = this.stack.pop()!
      subtree = { hash: parent(left.hash, subtree.hash), leaves: left.leaves * 2 }
    }
    this.stack.push(subtree)
  }
}

/** The root of `data` in one piece. */
export function merkleRoot(data: Uint8Array, leafHash: LeafHash = jsLeafHash): string {
  const builder = new MerkleBuilder(leafHash)
  builder.update(data)
  return builder.finish()
}

/** Bytes handed to a `BackgroundMerkle` and not hashed yet, at most. */
const IN_FLIGHT = 8 * 1024 * 1024

/**
 * A `MerkleBuilder` in a Web Worker, one item after another: `update` copies the bytes to it
 * and returns at once, unless `IN_FLIGHT` bytes already wait there, so that hashing overlaps
 * the transfer without buffering the whole of a fast stream.
 */
export class BackgroundMerkle {
  private readonly worker = new Worker(new URL('./merkle-worker.ts', import.meta.url), { type: 'module' })
  private inFlight = 0
  private wake: (() => void) | undefined
  private root: { resolve: (root: ItemRoot) => void; reject: (error: Error) => void } | undefined
  private failure: Error | undefined

  constructor() {
    this.worker.onmessage = (event: MessageEvent<{ hashed?: number; root?: string; busy?: number }>) => {
      if (event.data.root !== undefined) {
        this.root?.resolve({ root: event.data.root, hashingSeconds: (event.data.busy ?? 0) / 1000 })
        return
      }
      this.inFlight -= event.data.hashed ?? 0
      this.wake?.()
    }
    this.worker.onerror = (event) => {
      this.failure = new Error(`the Merkle worker failed: ${event.message}`)
      this.wake?.()
      this.root?.reject(this.failure)
    }
  }

  async update(data: Uint8Array): Promise<void> {
    while (this.inFlight >= IN_FLIGHT && this.failure === undefined) {
      await new Promise<void>((resolve) => (this.wake = resolve))
    }
    if (this.failure !== undefined) throw this.failure
    this.inFlight += data.length
    this.worker.postMessage(data)
  }

  /** The root of the item given since the last `finish`, once the worker has hashed it all. */
  async finish(): Promise<ItemRoot> {
    if (this.failure !== undefined) throw this.failure
    const root = new Promise<ItemRoot>((resolve, reject) => (this.root = { resolve, reject }))
    this.worker.postMessage(null)
    return root
  }

  /** Ends the worker. */
  close(): void {
    this.worker.terminate()
  }
}

/** What `BackgroundMerkle.finish` answers. */
export interface ItemRoot {
  root: string
  /** Seconds the worker spent hashing the item. */
  hashingSeconds: number
}
