import { describe, expect, it, vi } from 'vitest'
import { encodeFrame, IDLE_TIMEOUT_MS, MAX_FRAME_LEN, messages, ProtocolError, StreamReader, type Metadata } from '../src/wire'

/** A stream that yields `chunks` as they are, then ends. */
function streamOf(...chunks: Uint8Array[]): StreamReader {
  return new StreamReader(
    (async function* () {
      yield* chunks
    })(),
  )
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const part of parts) {
    out.set(part, at)
    at += part.length
  }
  return out
}

const item = { name: 'scan.ply', data_type: 'ply', size: 3, id: 'a1', hash: 'ff'.repeat(32), properties: { site: 'lab' } }

describe('the page framing', () => {
  it('writes a 4-byte big-endian length, then the varint-delimited message', () => {
    const frame = encodeFrame(messages.Metadata, item)
    const body = messages.Metadata.encode(messages.Metadata.fromObject(item)).finish()
    const length = new DataView(frame.buffer).getUint32(0)
    expect(length).toBe(frame.length - 4)
    expect(frame[4]).toBe(body.length) // a one-byte varint for a short body
    expect([...frame.subarray(5)]).toEqual([...body])
  })

  it('reads back a frame and the raw content after it, whatever pieces they arrive in', async () => {
    const bytes = concat(encodeFrame(messages.Metadata, item), new Uint8Array([7, 8, 9]))
    for (const cut of [1, 3, 4, 5, bytes.length - 2]) {
      const reader = streamOf(bytes.subarray(0, cut), bytes.subarray(cut))
      const read = await reader.expectFrame<Metadata>(messages.Metadata)
      expect(read).toMatchObject(item)
      const content: number[] = []
      for await (const piece of reader.readContent(read.size)) content.push(...piece)
      expect(content).toEqual([7, 8, 9])
      expect(await reader.readFrame(messages.Metadata)).toBeUndefined()
    }
  })

  it('refuses a frame over the limit before reading it', async () => {
    const prefix = new Uint8Array(4)
    new DataView(prefix.buffer).setUint32(0, MAX_FRAME_LEN + 1)
    await expect(streamOf(prefix).readFrame(messages.Metadata)).rejects.toThrow(/over the limit/)
  })

  it('refuses a varint length that disagrees with the frame length', async () => {
    const frame = encodeFrame(messages.Metadata, item)
    frame[4] = frame[4]! - 1
    await expect(streamOf(frame).readFrame(messages.Metadata)).rejects.toThrow(ProtocolError)
  })

  it('names what is missing when the stream ends inside a frame or inside content', async () => {
    const frame = encodeFrame(messages.Metadata, item)
    await expect(streamOf(frame.subarray(0, 10)).readFrame(messages.Metadata)).rejects.toThrow(/bytes short/)
    const reader = streamOf(new Uint8Array([1, 2]))
    await expect(
      (async () => {
        for await (const _ of reader.readContent(3));
      })(),
    ).rejects.toThrow(/1 bytes short of an item's 3/)
  })

  it('fails a read when the peer sends nothing for the idle timeout, unless told to wait', async () => {
    vi.useFakeTimers()
    try {
      const silent = { [Symbol.asyncIterator]: () => ({ next: () => new Promise<never>(() => {}) }) }
      const reader = new StreamReader(silent)
      const read = reader.readFrame(messages.Metadata)
      const failed = expect(read).rejects.toThrow(/sent nothing for 30 s/)
      await vi.advanceTimersByTimeAsync(IDLE_TIMEOUT_MS)
      await failed

      const patient = new StreamReader(silent)
      patient.idleTimeoutMs = undefined
      let settled = false
      void patient.readFrame(messages.Metadata).finally(() => (settled = true))
      await vi.advanceTimersByTimeAsync(10 * IDLE_TIMEOUT_MS)
      expect(settled).toBe(false)
    } finally {
      vi.useRealTimers()
    }
  })
})
