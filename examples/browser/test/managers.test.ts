import { describe, expect, it } from 'vitest'
import { findLeader, parseManagers, type LeaderAnswer, type Manager } from '../src/managers'

const ids = [
  '12D3KooWLRPJAA5o6Ztr9vdumNjgx3D7T9dbtXbZpGbSaDcJkfAP',
  '12D3KooWD51SR7iHbeSZk8CrZ3YpqgpXkJRUhU2s5es5mSL9vxyR',
  '12D3KooWHZsgmk9PizSijsH3zJFwG5q21ha3uwaevTZL5LJsXqMv',
] as const
const ws = (i: 0 | 1 | 2) => `/ip4/127.0.0.1/tcp/${4000 + i}/ws/p2p/${ids[i]}`
const tcp = (i: 0 | 1 | 2) => `/ip4/127.0.0.1/tcp/${5000 + i}/p2p/${ids[i]}`
const isWs = (manager: Manager['addr']) => manager.getComponents().some((c) => c.name === 'ws')

/** `ask` answering as `answers` says, by peer id; a missing answer is a manager that is down. */
function asker(answers: Record<string, LeaderAnswer>, asked: string[] = []) {
  return async (manager: Manager): Promise<LeaderAnswer> => {
    asked.push(manager.addr.toString())
    const answer = answers[manager.id.toString()]
    if (answer === undefined) throw new Error('connection refused')
    return answer
  }
}

describe('the managers field', () => {
  it('takes addresses separated by commas or white space', () => {
    const managers = parseManagers(` ${ws(0)}, ${ws(1)}\n${ws(2)} `)
    expect(managers.map((m) => m.id.toString())).toEqual(ids)
  })

  it('refuses an address without a peer id, and an empty field', () => {
    expect(() => parseManagers('/ip4/127.0.0.1/tcp/4000/ws')).toThrow(/does not end with \/p2p/)
    expect(() => parseManagers(' , ')).toThrow(/no manager/)
  })
})

describe('finding the leader', () => {
  it('passes over a manager that is down and takes the one that leads', async () => {
    const managers = parseManagers([ws(0), ws(1), ws(2)].join(','))
    const leader = await findLeader(
      managers,
      asker({ [ids[1]]: { leading: false, leader_addrs: [] }, [ids[2]]: { leading: true, leader_addrs: [] } }),
      isWs,
    )
    expect(leader?.id.toString()).toBe(ids[2])
  })

  it('follows the WebSocket address a standby names, once the leader confirms', async () => {
    const managers = parseManagers(ws(0))
    const asked: string[] = []
    const leader = await findLeader(
      managers,
      asker(
        {
          [ids[0]]: { leading: false, leader_addrs: [tcp(1), ws(1)] },
          [ids[1]]: { leading: true, leader_addrs: [tcp(1), ws(1)] },
        },
        asked,
      ),
      isWs,
    )
    expect(leader?.addr.toString()).toBe(ws(1))
    expect(asked).toEqual([ws(0), ws(1)])
  })

  it('finds none while an election is under way', async () => {
    const managers = parseManagers([ws(0), ws(1)].join(' '))
    const standby = { leading: false, leader_addrs: [] }
    expect(await findLeader(managers, asker({ [ids[0]]: standby, [ids[1]]: standby }), isWs)).toBeUndefined()
  })
})
