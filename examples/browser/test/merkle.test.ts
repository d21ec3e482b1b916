import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { CHUNK_SIZE, MerkleBuilder, jsLeafHash, merkleRoot, wasmLeafHash } from '../src/merkle'

interface Vector {
  size: number
  leaves: number
  root: string
}

const vectors: { chunk_size: number; vectors: Vector[] } = JSON.parse(
  readFileSync(// The copy the Rust tests check against ../shared/vectors/merkle.json.
  new URL('../../../crates/domain-merkle/tests/vectors/merkle.json', import.meta.url), 'utf8'),
)

/** Byte i = i mod 251, as the vectors say. */
function data(size: number): Uint8Array {
  const bytes = new Uint8Array(size)
  for (let i = 0; i < size; i++) bytes[i] = i % 251
  return bytes
}

describe('the browser Merkle tree', () => {
  it('uses the chunk size of the shared vectors', () => {
    expect(vectors.chunk_size).toBe(CHUNK_SIZE)
  })

  for (const vector of vectors.vectors) {
    it(`reproduces the shared root for ${vector.size} bytes`, async () => {
      expect(merkleRoot(data(vector.size))).toBe(vector.root)
      expect(merkleRoot(data(vector.size), await wasmLeafHash()), 'leaves in WebAssembly').toBe(vector.root)
    })
  }

  it('hashes every leaf alike in WebAssembly and in JS', async () => {
    const wasm = await wasmLeafHash()
    // Empty, short, and whole chunks: every kind of leaf a tree has.
    for (const size of [0, 1, 1023, 1024, 1025, CHUNK_SIZE - 1, CHUNK_SIZE]) {
      expect(wasm(data(size)), `${size} bytes`).toEqual(jsLeafHash(data(size)))
    }
  })

  it('gives the same root whatever pieces the bytes arrive in', () => {
    const bytes = data(5 * CHUNK_SIZE + 123)
    const whole = merkleRoot(bytes)
    // Pieces that start and end inside chunks, on their edges, and across several.
    for (const piece of [1, 1000, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 7]) {
      const builder = new MerkleBuilder()
      for (let at = 0; at < bytes.length; at += piece) builder.update(bytes.subarray(at, at + piece))
      expect(builder.finish(), `pieces of ${piece}`).toBe(whole)
      expect(builder.length).toBe(bytes.length)
    }
  })
})
