// The posemesh domain protocol v1 on a js-libp2p stream: the messages, compiled at run time
// from the very `.proto` files the Rust crates build from (so the two cannot drift), and the
// framing of docs/protocol.md: a 4-byte big-endian length `n`, then `n` bytes holding the message in
// its length-delimited form (a varint length, then the body).

import protobuf from 'protobufjs'
import discoveryProto from '../../../crates/domain-proto/proto/discovery.proto?raw'
import domainDataProto from '../../../crates/domain-proto/proto/domain_data.proto?raw'
import taskProto from '../../../crates/domain-proto/proto/task.proto?raw'

/** The largest frame either side accepts, as the Rust nodes' default (docs/protocol.md). */
export const MAX_FRAME_LEN = 4 * 1024 * 1024

/** How long a read waits for the peer's next bytes, as the nodes' idle timeout (docs/design.md §9). */
export const IDLE_TIMEOUT_MS = 30_000

const root = new protobuf.Root()
protobuf.parse(discoveryProto, root, { keepCase: true })
protobuf.parse(domainDataProto, root, { keepCase: true })
protobuf.parse(taskProto, root, { keepCase: true })
root.resolveAll()

/** The messages this page sends or receives. */
export const messages = {
  Metadata: root.lookupType('domain_data.Metadata'),
  Query: root.lookupType('domain_data.Query'),
  UpsertMetadata: root.lookupType('domain_data.UpsertMetadata'),
  JobRequest: root.lookupType('task.JobRequest'),
  SubmitJobResponse: root.lookupType('task.SubmitJobResponse'),
  Task: root.lookupType('task.Task'),
  ConsumeDataInputV1: root.lookupType('task.ConsumeDataInputV1'),
  UnsubscribeDataQueryV1: root.lookupType('task.UnsubscribeDataQueryV1'),
  DomainClusterHandshakeRequest: root.lookupType('task.DomainClusterHandshakeRequest'),
  DomainClusterHandshakeResponse: root.lookupType('task.DomainClusterHandshakeResponse'),
  LeaderRequest: root.lookupType('discovery.LeaderRequest'),
  LeaderResponse: root.lookupType('discovery.LeaderResponse'),
} as const

/** A stored item as a node describes it. */
export interface Metadata {
  name: string
  data_type: string
  size: number
  id: string
  hash?: string
  properties: Record<string, string>
}

/** The part of `domain_data.Query` this page uses. */
export interface Query {
  ids?: string[]
  name_regexp?: string
  data_type_regexp?: string
  metadata_only?: boolean
}

/** A task as the manager hands it to its submitter, with its receiver and token. */
export interface Task {
  name: string
  receiver?: string
  endpoint: string
  access_token?: string
  job_id: string
  sender: string
  status: string
}

/** A stream broke the protocol: the peer sent something this page must not accept. */
export class ProtocolError extends Error {
  override name = 'ProtocolError'
}

/** `message` as one frame. */
export function encodeFrame(type: protobuf.Type, message: Record<string, unknown>): Uint8Array {
  // `fromObject` takes enums by name, as the callers write them.
  const delimited = type.encodeDelimited(type.fromObject(message)).finish()
  const frame = new Uint8Array(4 + delimited.length)
  new DataView(frame.buffer).setUint32(0, delimited.length)
  frame.set(delimited, 4)
  return frame
}

/** What a frame's body decodes to: enums by name, 64-bit integers as numbers. */
function toObject<T>(type: protobuf.Type, body: Uint8Array): T {
  let message: protobuf.Message
  try {
    const reader = protobuf.Reader.create(body)
    const length = reader.uint32()
    if (reader.pos + length !== body.length) {
      throw new ProtocolError(
        `${type.name}: the varint length ${length} disagrees with the frame length ${body.length}`,
      )
    }
    message = type.decode(reader, length)
  } catch (error) {
    if (error instanceof ProtocolError) throw error
    throw new ProtocolError(`${type.name}: ${(error as Error).message}`)
  }
  return type.toObject(message, { enums: String, longs: Number, defaults: true }) as T
}

/** What a js-libp2p stream yields: bytes, or a list of byte arrays (`Uint8ArrayList`). */
export type Chunk = Uint8Array | { subarray(): Uint8Array }

/**
 * Reads frames and raw content from a stream's chunks, holding only what has arrived and not
 * been taken yet.
 */
export class StreamReader {
  private readonly chunks: AsyncIterator<Chunk>
  private buffer: Uint8Array = new Uint8Array(0)
  /**
   * How long a read waits for bytes before it fails; `undefined` waits for ever, as a
   * subscription does between items.
   */
  idleTimeoutMs: number | undefined = IDLE_TIMEOUT_MS

  constructor(source: AsyncIterable<Chunk>) {
    this.chunks = source[Symbol.asyncIterator]()
  }

  /** Whether a chunk arrived (`false` at the end of the stream); fails when the peer stalls. */
  private async pull(): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined
    const limit = this.idleTimeoutMs
    const stalled = new Promise<never>((_, reject) => {
      if (limit !== undefined) {
        timer = setTimeout(() => reject(new ProtocolError(`the peer sent nothing for ${limit / 1000} s`)), limit)
      }
    })
    let next: IteratorResult<Chunk>
    try {
      next = await Promise.race([this.chunks.next(), stalled])
    } finally {
      clearTimeout(timer)
    }
    if (next.done === true) return false
    const chunk = next.value instanceof Uint8Array ? next.value : next.value.subarray()
    if (this.buffer.length === 0) {
      this.buffer = chunk
    } else {
      const joined = new Uint8Array(this.buffer.length + chunk.length)
      joined.set(this.buffer)
      joined.set(chunk, this.buffer.length)
      this.buffer = joined
    }
    return true
  }

  private take(n: number): Uint8Array {
    const taken = this.buffer.subarray(0, n)
    this.buffer = this.buffer.subarray(n)
    return taken
  }

  /** Exactly `n` bytes; fails when the stream ends first. */
  async readExact(n: number, what: string): Promise<Uint8Array> {
    while (this.buffer.length < n) {
      if (!(await this.pull())) {
        throw new ProtocolError(`the stream ended ${n - this.buffer.length} bytes short of ${what}`)
      }
    }
    return this.take(n)
  }

  /** The next frame as a `type`, or `undefined` when the stream ends cleanly before it. */
  async readFrame<T>(type: protobuf.Type, limit = MAX_FRAME_LEN): Promise<T | undefined> {
    if (this.buffer.length === 0 && !(await this.pull())) return undefined
    const prefix = await this.readExact(4, `a ${type.name} frame`)
    const length = new DataView(prefix.buffer, prefix.byteOffset, 4).getUint32(0)
    if (length > limit) {
      throw new ProtocolError(`${type.name}: a frame of ${length} bytes is over the limit of ${limit}`)
    }
    const body = await this.readExact(length, `a ${type.name} frame`)
    return toObject<T>(type, body)
  }

  /** Like `readFrame`, but the end of the stream is an error. */
  async expectFrame<T>(type: protobuf.Type): Promise<T> {
    const frame = await this.readFrame<T>(type)
    if (frame === undefined) {
      throw new ProtocolError(`the stream ended where a ${type.name} was due`)
    }
    return frame
  }

  /** Exactly `size` raw content bytes, as the pieces in which they arrived. */
  async *readContent(size: number): AsyncGenerator<Uint8Array> {
    let left = size
    while (left > 0) {
      if (this.buffer.length === 0 && !(await this.pull())) {
        throw new ProtocolError(`the stream ended ${left} bytes short of an item's ${size}`)
      }
      const piece = this.take(Math.min(left, this.buffer.length))
      left -= piece.length
      yield piece
    }
  }
}
