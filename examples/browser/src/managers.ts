// The managers the page is given, and which of them leads. Several managers on one etcd elect
// a leader; only the leader serves `/jobs/v1`, and every manager answers `/leader/v1` with
// who leads (docs/protocol.md). The search is written over an `ask` function, so that its
// rules are tested without a network.

import type { PeerId } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'

/** A manager: an address the page can dial, and the peer id it ends with. */
export interface Manager {
  addr: Multiaddr
  id: PeerId
}

/** What a manager says on `/leader/v1`. */
export interface LeaderAnswer {
  leading: boolean
  leader_addrs: string[]
}

/** The managers of `text`: addresses separated by commas or white space, each ending with `/p2p/<id>`. */
export function parseManagers(text: string): [Manager, ...Manager[]] {
  const [first, ...rest] = text
    .split(/[\s,]+/)
    .filter((address) => address.length > 0)
    .map(toManager)
  if (first === undefined) throw new Error('no manager address given')
  return [first, ...rest]
}

function toManager(address: string): Manager {
  const addr = multiaddr(address)
  const id = addr.getComponents().findLast((c) => c.name === 'p2p')?.value
  if (id === undefined) throw new Error(`the manager's address ${address} does not end with /p2p/<peer id>`)
  return { addr, id: peerIdFromString(id) }
}

/**
 * The leading manager: the first of `managers` that says it leads, or the leader a standby
 * names once it confirms it; `undefined` when none leads (all down, or an election under
 * way). A manager that cannot be asked is passed over. Only addresses the page can dial
 * (`canDial`: WebSocket ones) are followed.
 */
export async function findLeader(
  managers: Manager[],
  ask: (manager: Manager) => Promise<LeaderAnswer>,
  canDial: (addr: Multiaddr) => boolean,
): Promise<Manager | undefined> {
  for (const manager of managers) {
    let answer: LeaderAnswer
    try {
      answer = await ask(manager)
    } catch {
      continue
    }
    if (answer.leading) return manager
    for (const address of answer.leader_addrs) {
      let named: Manager
      try {
        named = toManager(address)
      } catch {
        continue
      }
      if (named.id.equals(manager.id) || !canDial(named.addr)) continue
      const confirmed = await ask(named).catch(() => undefined)
      if (confirmed?.leading) return named
    }
  }
  return undefined
}
