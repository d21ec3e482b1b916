// A loopback cluster for the browser tests and `cargo xtask browser`: the real `domain-manager`
// and `domain-node` binaries of this repository, with their state in a temporary folder.

import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { promisify } from 'node:util'

const repository = resolve(import.meta.dirname, '../../..')

/** Where cargo put the binaries: `DOMAIN_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`. */
export const binDir =
  process.env.DOMAIN_BIN_DIR ?? join(process.env.CARGO_TARGET_DIR ?? join(repository, 'target'), 'debug')

/** A running binary, with the addresses it printed before `ready`. */
export interface Peer {
  process: ChildProcess
  listening: string[]
  ready: string
}

/** Starts `binary` with `args` and waits for its `ready <addr>` line. */
async function startPeer(binary: string, args: string[], env: NodeJS.ProcessEnv): Promise<Peer> {
  const child = spawn(join(binDir, binary), args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
  const stderr: string[] = []
  child.stderr!.on('data', (data: Buffer) => {
    stderr.push(data.toString())
    if (stderr.length > 200) stderr.shift()
  })
  const listening: string[] = []
  const lines = createInterface({ input: child.stdout! })
  const ready = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${binary} printed no ready line in 60 s`)), 60_000)
    child.once('error', reject)
    child.once('exit', (code, signal) =>
      reject(new Error(`${binary} exited (${code ?? signal}) before ready: ${stderr.join('')}`)),
    )
    lines.on('line', (line) => {
      const [word, address] = line.split(' ')
      if (word === 'listening' && address) listening.push(address)
      if (word === 'ready' && address) {
        clearTimeout(timer)
        resolve(address)
      }
    })
  })
  child.removeAllListeners('exit')
  return { process: child, listening, ready }
}

async function stopPeer(peer: Peer): Promise<void> {
  if (peer.process.exitCode !== null || peer.process.signalCode !== null) return
  const exited = new Promise((resolve) => peer.process.once('exit', resolve))
  peer.process.kill('SIGTERM')
  await exited
}

/** A manager and one node on loopback, and the `domain` CLI pointed at them. */
export class LoopbackCluster {
  private constructor(
    readonly dir: string,
    readonly manager: Peer,
    readonly node: Peer,
    private readonly env: NodeJS.ProcessEnv,
  ) {}

  static async start(): Promise<LoopbackCluster> {
    const dir = mkdtempSync(join(tmpdir(), 'domain-browser-'))
    // No settings file or identity of the user's leaks in.
    const env = { ...process.env, HOME: dir, XDG_CONFIG_HOME: join(dir, 'config'), RUST_LOG: 'warn' }
    const manager = await startPeer('domain-manager', ['run', '--data-dir', join(dir, 'manager')], env)
    try {
      const node = await startPeer(
        'domain-node',
        ['run', '--data-dir', join(dir, 'node'), '--manager', manager.ready],
        env,
      )
      return new LoopbackCluster(dir, manager, node, env)
    } catch (error) {
      await stopPeer(manager)
      throw error
    }
  }

  /** The manager's WebSocket address, the one a page dials. */
  get managerWebSocket(): string {
    const address = this.manager.listening.find((a) => a.includes('/ws/'))
    if (address === undefined) throw new Error(`the manager listens on no WebSocket: ${this.manager.listening}`)
    return address
  }

  /** Runs the `domain` CLI against this cluster; its standard output. */
  async domain(...args: string[]): Promise<string> {
    const { stdout } = await promisify(execFile)(join(binDir, 'domain'), args, {
      env: { ...this.env, DOMAIN_MANAGER: this.manager.ready },
      maxBuffer: 16 << 20,
    })
    return stdout
  }

  async stop(): Promise<void> {
    await Promise.all([stopPeer(this.node), stopPeer(this.manager)])
    rmSync(this.dir, { recursive: true, force: true })
  }
}
