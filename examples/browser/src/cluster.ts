// A domain cluster client for the browser, on js-libp2p: submit a task to the manager on
// `/jobs/v1`, find the node it assigns through the manager's Kademlia table, open the task's
// stream with its token, and speak `/store/v1` or `/load/v1` on it.

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import type { Libp2p, PeerId, Stream } from '@libp2p/interface'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { webSockets } from '@libp2p/websockets'
import type { Multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { findLeader, parseManagers, type LeaderAnswer, type Manager } from './managers'
import { BackgroundMerkle } from './merkle'
import {
  encodeFrame,
  messages,
  ProtocolError,
  StreamReader,
  type Metadata,
  type Query,
  type Task,
} from './wire'

export const STORE_V1 = '/store/v1'
export const LOAD_V1 = '/load/v1'
const JOBS_V1 = '/jobs/v1'
const LEADER_V1 = '/leader/v1'
const KAD_PROTOCOL = '/posemesh/kad/1.0.0'

/** How long a task's token lives, in the scheduler's duration syntax (docs/design.md §7). */
const TASK_TIMEOUT = '10m'
/** Bytes read from a file and written to the stream at once. */
const UPLOAD_BATCH = 256 * 1024
/** How long the page waits for one of several managers to lead: past a lease and an election. */
const LEADER_PATIENCE_MS = 15_000
/** What the manager and the nodes refuse in a `Metadata.size` (a proto2 `uint32`). */
const MAX_ITEM_SIZE = 0xffff_ffff

/** The cluster refused or broke a request; the message says which and why. */
export class ClusterError extends Error {
  override name = 'ClusterError'
}

/** How far a transfer has come. */
export type OnProgress = (done: number, total: number) => void

/** An item uploaded, with both roots: the page's own and the node's. */
export interface Stored {
  metadata: Metadata
  root: string
  node: string
  /** Seconds the page spent computing the root (in its worker). */
  hashingSeconds: number
}

/** An item downloaded, its root computed here while the bytes arrived. */
export interface Loaded {
  metadata: Metadata
  content: Blob
  root: string
  node: string
  /** Seconds the page spent computing the root (in its worker). */
  hashingSeconds: number
}

/** A live subscription; `stop` sends `UnsubscribeDataQueryV1` and waits for the node's close. */
export interface Watch {
  node: string
  stop(): Promise<void>
  /** Settles when the node ends the subscription, or it fails. */
  done: Promise<void>
}

/** Starts a js-libp2p peer that can reach a cluster over WebSocket. */
export async function startPeer(): Promise<Libp2p> {
  return createLibp2p({
    transports: [webSockets({ bufferedAmountPollInterval: 10 })],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    // js-libp2p in a browser refuses to dial private and loopback addresses, and the
    // cluster on this machine has nothing else. In production the manager listens on `/wss`
    // with a real certificate under a public name, and this gater is not needed.
    connectionGater: { denyDialMultiaddr: async () => false },
    services: {
      identify: identify(),
      ping: ping(),
      // Only to find the nodes the manager assigns: a client asks, it does not serve.
      dht: kadDHT({
        protocol: KAD_PROTOCOL,
        clientMode: true,
        peerInfoMapper: passthroughMapper,
      }),
    },
  })
}

/**
 * A browser's view of one cluster, through its manager: one, or several on one etcd, of
 * which the page follows whichever leads.
 */
export class DomainClient {
  private readonly managers: Manager[]
  private leader: Manager

  constructor(
    readonly peer: Libp2p,
    managerAddresses: string,
  ) {
    let managers: [Manager, ...Manager[]]
    try {
      managers = parseManagers(managerAddresses)
    } catch (error) {
      throw new ClusterError((error as Error).message)
    }
    this.managers = managers
    this.leader = managers[0]
  }

  /** The manager the page talks to: the leader, once found. */
  get manager(): Multiaddr {
    return this.leader.addr
  }

  /** Connects to the manager, or the leader of several (and through it, to the cluster's routing table). */
  async connect(): Promise<void> {
    if (this.managers.length === 1) {
      await this.peer.dial(this.leader.addr)
      return
    }
    await this.followLeader()
  }

  /** Asks the managers who leads until one does (an election takes about a lease), and dials it. */
  private async followLeader(): Promise<void> {
    const giveUp = Date.now() + LEADER_PATIENCE_MS
    for (;;) {
      const leader = await findLeader(
        this.managers,
        (manager) => this.askLeader(manager),
        (addr) => addr.getComponents().some((c) => c.name === 'ws' || c.name === 'wss'),
      )
      if (leader !== undefined) {
        await this.peer.dial(leader.addr)
        this.leader = leader
        return
      }
      if (Date.now() > giveUp) {
        throw new ClusterError(`none of the ${this.managers.length} managers leads`)
      }
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
  }

  /** `/leader/v1`: who `manager` says leads. */
  private async askLeader(manager: Manager): Promise<LeaderAnswer> {
    const stream: Stream = await this.peer.dialProtocol(manager.addr, LEADER_V1)
    const reader = new StreamReader(stream)
    try {
      stream.send(encodeFrame(messages.LeaderRequest, {}))
      const answer = await reader.expectFrame<LeaderAnswer>(messages.LeaderResponse)
      await stream.close()
      return answer
    } catch (error) {
      stream.abort(error as Error)
      throw error
    }
  }

  /** A `/jobs/v1` stream to the leader; with several managers, to the new one when it changed. */
  private async jobsStream(): Promise<Stream> {
    try {
      return await this.peer.dialProtocol(this.leader.id, JOBS_V1)
    } catch (error) {
      if (this.managers.length === 1) throw error
      await this.followLeader()
      return this.peer.dialProtocol(this.leader.id, JOBS_V1)
    }
  }

  /**
   * Uploads `files` into `domain`, in turn on one `/store/v1` stream to the node the manager
   * picks; checks the node's root of each. `onStored` sees each item as the node answers.
   */
  async upload(
    domain: string,
    files: File[],
    onProgress?: OnProgress,
    onStored?: (stored: Stored) => void,
  ): Promise<Stored[]> {
    for (const file of files) {
      if (file.size > MAX_ITEM_SIZE) {
        throw new ClusterError(`${file.name} has ${file.size} bytes; an item holds at most ${MAX_ITEM_SIZE}`)
      }
    }
    const total = files.reduce((sum, file) => sum + file.size, 0)
    const { stream, reader, node } = await this.openTask(domain, 'upload', STORE_V1)
    const tree = new BackgroundMerkle()
    const stored: Stored[] = []
    let before = 0
    try {
      for (const file of files) {
        stream.send(
          encodeFrame(messages.UpsertMetadata, {
            name: file.name,
            data_type: file.type === '' ? 'application/octet-stream' : file.type,
            size: file.size,
            is_new: true,
            id: '',
            properties: {},
          }),
        )
        const read = async (at: number) => new Uint8Array(await file.slice(at, at + UPLOAD_BATCH).arrayBuffer())
        // The next batch is read while this one is hashed and sent: a read costs milliseconds.
        let next = read(0)
        for (let at = 0; at < file.size; at += UPLOAD_BATCH) {
          const batch = await next
          if (at + UPLOAD_BATCH < file.size) next = read(at + UPLOAD_BATCH)
          await tree.update(batch)
          if (!stream.send(batch)) await stream.onDrain()
          onProgress?.(before + at + batch.length, total)
        }
        before += file.size
        onProgress?.(before, total)
        const { root, hashingSeconds } = await tree.finish()
        const metadata = await reader.expectFrame<Metadata>(messages.Metadata)
        if (metadata.hash !== root) {
          throw new ClusterError(
            `${file.name}: node ${node} answered the root ${metadata.hash ?? '(none)'}, the page computed ${root}`,
          )
        }
        const item = { metadata, root, node, hashingSeconds }
        stored.push(item)
        onStored?.(item)
      }
      await stream.close()
      return stored
    } catch (error) {
      stream.abort(error as Error)
      throw error
    } finally {
      tree.close()
    }
  }

  /** The metadata of every item of `domain` on the node the manager picks. */
  async list(domain: string, query: Query = {}): Promise<{ items: Metadata[]; node: string }> {
    const { stream, reader, node } = await this.openLoad(domain, 'list', { ...query, metadata_only: true }, false)
    const items: Metadata[] = []
    try {
      for (;;) {
        const item = await reader.readFrame<Metadata>(messages.Metadata)
        if (item === undefined) break
        items.push(item)
      }
      await stream.close()
      return { items, node }
    } catch (error) {
      stream.abort(error as Error)
      throw error
    }
  }

  /** Downloads the item `id` of `domain`, computing its root on the way. */
  async download(domain: string, id: string, onProgress?: OnProgress): Promise<Loaded> {
    const { stream, reader, node } = await this.openLoad(domain, 'download', { ids: [id] }, false)
    const tree = new BackgroundMerkle()
    try {
      const metadata = await reader.readFrame<Metadata>(messages.Metadata)
      if (metadata === undefined) {
        throw new ClusterError(`node ${node} has no item ${id} in ${domain}`)
      }
      if (metadata.id !== id) {
        throw new ProtocolError(`asked node ${node} for ${id}, it sent ${metadata.id}`)
      }
      const pieces: Uint8Array[] = []
      let received = 0
      for await (const view of reader.readContent(metadata.size)) {
        // The reader hands out views of its buffers: the Blob keeps a copy, which is also
        // what goes to the worker (posting a view would clone its whole buffer each time).
        const piece = view.slice()
        await tree.update(piece)
        pieces.push(piece)
        received += piece.length
        onProgress?.(received, metadata.size)
      }
      onProgress?.(metadata.size, metadata.size)
      await stream.close()
      const type = metadata.data_type.includes('/') ? metadata.data_type : 'application/octet-stream'
      const { root, hashingSeconds } = await tree.finish()
      const content = new Blob(pieces as BlobPart[], { type })
      return { metadata, content, root, node, hashingSeconds }
    } catch (error) {
      stream.abort(error as Error)
      throw error
    } finally {
      tree.close()
    }
  }

  /**
   * Subscribes to the metadata of `domain`'s items: those there now, then each new one as a
   * node stores it (`keep_alive`).
   */
  async watch(domain: string, onItem: (item: Metadata) => void): Promise<Watch> {
    const { stream, reader, node } = await this.openLoad(domain, 'watch', { metadata_only: true }, true)
    // Between new items a subscription is quiet for as long as nobody stores anything.
    reader.idleTimeoutMs = undefined
    const done = (async () => {
      try {
        for (;;) {
          const item = await reader.readFrame<Metadata>(messages.Metadata)
          if (item === undefined) return
          onItem(item)
        }
      } catch (error) {
        stream.abort(error as Error)
        throw error
      }
    })()
    return {
      node,
      done,
      stop: async () => {
        stream.send(encodeFrame(messages.UnsubscribeDataQueryV1, {}))
        await stream.close()
        await done
      },
    }
  }

  private async openLoad(domain: string, job: string, query: Query, keepAlive: boolean) {
    const opened = await this.openTask(domain, job, LOAD_V1)
    opened.stream.send(
      encodeFrame(messages.ConsumeDataInputV1, {
        query: { ids: [], names: [], data_types: [], metadata_only: false, ...query },
        keep_alive: keepAlive,
      }),
    )
    return opened
  }

  /**
   * Submits a job of one task on `endpoint`, takes the receiver and token the manager
   * assigns, dials that node and opens the task's stream with the handshake.
   */
  private async openTask(domain: string, job: string, endpoint: string) {
    const task = await this.submit(domain, job, endpoint)
    const node = peerIdFromString(task.receiver!)
    const stream = await this.peer.dialProtocol(node, endpoint)
    const reader = new StreamReader(stream)
    try {
      stream.send(
        encodeFrame(messages.DomainClusterHandshakeRequest, {
          access_token: task.access_token!,
          domain_id: domain,
        }),
      )
      const answer = await reader.readFrame<{ code: string; err_msg: string }>(
        messages.DomainClusterHandshakeResponse,
      )
      if (answer === undefined) {
        throw new ClusterError(`node ${node} closed the ${endpoint} stream at the handshake`)
      }
      if (answer.code !== 'OK') {
        throw new ClusterError(`node ${node} refused the ${endpoint} handshake: ${answer.err_msg}`)
      }
    } catch (error) {
      stream.abort(error as Error)
      throw error
    }
    return { stream, reader, node: node.toString() }
  }

  /** `/jobs/v1`: the first assignment of a one-task job. */
  private async submit(domain: string, job: string, endpoint: string): Promise<Task> {
    const stream = await this.jobsStream()
    const reader = new StreamReader(stream)
    try {
      stream.send(
        encodeFrame(messages.JobRequest, {
          name: job,
          tasks: [
            {
              name: job,
              capability_filters: { endpoint },
              timeout: TASK_TIMEOUT,
              needs: [],
              resource_recruitment: { recruitment_policy: 'ALWAYS', termination_policy: 'KEEP' },
              sender: this.peer.peerId.toString(),
            },
          ],
          nonce: crypto.randomUUID(),
          domain_id: domain,
        }),
      )
      const response = await reader.expectFrame<{ code: string; job_id: string; err_msg: string }>(
        messages.SubmitJobResponse,
      )
      if (response.code !== 'Accepted') {
        throw new ClusterError(`the manager refused the ${job} job: ${response.err_msg}`)
      }
      for (;;) {
        const task = await reader.readFrame<Task>(messages.Task)
        if (task === undefined) {
          throw new ClusterError(`job ${response.job_id} ended before its ${job} task was assigned`)
        }
        if (task.name === job && task.receiver && task.access_token) {
          // Closing our side tells the manager the submitter needs nothing more.
          await stream.close()
          return task
        }
      }
    } catch (error) {
      stream.abort(error as Error)
      throw error
    }
  }
}
