// The page: wires the form to a `DomainClient`. `?manager=<multiaddr>&domain=<id>` fill the
// fields, and a manager given that way is connected to at once.

import { DomainClient, startPeer, type Watch } from './cluster'
import type { Metadata } from './wire'

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id)
  if (found === null) throw new Error(`the page has no #${id}`)
  return found as T
}

const ui = {
  peer: element('peer'),
  manager: element<HTMLInputElement>('manager'),
  domain: element<HTMLInputElement>('domain'),
  connect: element<HTMLButtonElement>('connect'),
  status: element('status'),
  files: element<HTMLInputElement>('files'),
  upload: element<HTMLButtonElement>('upload'),
  uploadProgress: element<HTMLProgressElement>('upload-progress'),
  uploadRate: element('upload-rate'),
  uploaded: element<HTMLUListElement>('uploaded'),
  refresh: element<HTMLButtonElement>('refresh'),
  items: element<HTMLTableSectionElement>('items'),
  downloadProgress: element<HTMLProgressElement>('download-progress'),
  downloadResult: element('download-result'),
  watch: element<HTMLButtonElement>('watch'),
  live: element<HTMLUListElement>('live'),
}

let client: DomainClient | undefined
let watching: Watch | undefined

function say(target: HTMLElement, text: string, kind: 'ok' | 'bad' | 'muted' = 'muted'): void {
  target.textContent = text
  target.className = kind
}

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`
}

function perSecond(bytes: number, seconds: number): string {
  return `${(bytes / (1024 * 1024) / Math.max(seconds, 1e-3)).toFixed(1)} MiB/s`
}

/**
 * A transfer's rate over the time since `started`, next to the speed of the page's own
 * BLAKE3 on the same bytes: the limit of a transfer in this page.
 */
function rate(bytes: number, started: number, hashingSeconds: number): string {
  const seconds = (performance.now() - started) / 1000
  const hashing = hashingSeconds > 0 ? `; BLAKE3 here: ${perSecond(bytes, hashingSeconds)}` : ''
  return `${mib(bytes)} in ${seconds.toFixed(2)} s, ${perSecond(bytes, seconds)}${hashing}`
}

function domain(): string {
  return ui.domain.value.trim()
}

function setConnected(connected: boolean): void {
  for (const button of [ui.upload, ui.refresh, ui.watch]) button.disabled = !connected
}

async function connect(): Promise<void> {
  setConnected(false)
  await watching?.stop().catch(() => undefined)
  watching = undefined
  say(ui.status, 'connecting…')
  try {
    const next = new DomainClient(peer, ui.manager.value)
    await next.connect()
    client = next
    setConnected(true)
    // The first listing also finds a node through the manager's Kademlia table (js-kad-dht
    // waits for its first self-query, up to seconds): "connected" comes after it, so that
    // what the page shows as a transfer's rate is the transfer's.
    if (await refresh()) say(ui.status, `connected to ${next.manager.toString()}`, 'ok')
  } catch (error) {
    say(ui.status, `cannot connect: ${(error as Error).message}`, 'bad')
  }
}

async function upload(): Promise<void> {
  if (client === undefined) return
  const files = [...(ui.files.files ?? [])]
  if (files.length === 0) {
    say(ui.uploadRate, 'pick a file first', 'bad')
    return
  }
  ui.upload.disabled = true
  const started = performance.now()
  try {
    const stored = await client.upload(
      domain(),
      files,
      (done, total) => (ui.uploadProgress.value = total === 0 ? 1 : done / total),
      (item) => {
        const line = document.createElement('li')
        line.dataset.id = item.metadata.id
        line.innerHTML = `<b></b> <code></code> <span class="ok">root matches the node's</span> <code class="muted"></code>`
        line.querySelector('b')!.textContent = item.metadata.name
        line.querySelectorAll('code')[0]!.textContent = item.metadata.id
        line.querySelectorAll('code')[1]!.textContent = item.root
        ui.uploaded.append(line)
      },
    )
    ui.uploadProgress.value = 1
    const bytes = stored.reduce((sum, item) => sum + item.metadata.size, 0)
    const hashing = stored.reduce((sum, item) => sum + item.hashingSeconds, 0)
    say(ui.uploadRate, `uploaded ${rate(bytes, started, hashing)}`, 'ok')
    await refresh()
  } catch (error) {
    say(ui.uploadRate, `upload failed: ${(error as Error).message}`, 'bad')
  } finally {
    ui.upload.disabled = false
  }
}

function itemRow(item: Metadata): HTMLTableRowElement {
  const row = document.createElement('tr')
  row.dataset.id = item.id
  const cells = [item.name, item.data_type, String(item.size), (item.hash ?? '').slice(0, 16) + '…', item.id]
  for (const [i, text] of cells.entries()) {
    const cell = row.insertCell()
    cell.textContent = text
    if (i >= 3) cell.className = 'mono'
  }
  const button = document.createElement('button')
  button.textContent = 'Download'
  button.className = 'download'
  button.addEventListener('click', () => void download(item))
  row.insertCell().append(button)
  return row
}

/** Lists the domain's items again; whether it could. */
async function refresh(): Promise<boolean> {
  if (client === undefined) return false
  try {
    const { items } = await client.list(domain())
    items.sort((a, b) => a.name.localeCompare(b.name))
    ui.items.replaceChildren(...items.map(itemRow))
    return true
  } catch (error) {
    say(ui.status, `cannot list: ${(error as Error).message}`, 'bad')
    return false
  }
}

async function download(item: Metadata): Promise<void> {
  if (client === undefined) return
  say(ui.downloadResult, `downloading ${item.name}…`)
  const started = performance.now()
  try {
    const loaded = await client.download(domain(), item.id, (done, total) => {
      ui.downloadProgress.value = total === 0 ? 1 : done / total
    })
    const matches = loaded.root === loaded.metadata.hash
    say(
      ui.downloadResult,
      matches
        ? `${item.name}: root ${loaded.root} matches the node's (${rate(loaded.metadata.size, started, loaded.hashingSeconds)})`
        : `${item.name}: the page computed root ${loaded.root}, the node says ${loaded.metadata.hash ?? '(none)'}`,
      matches ? 'ok' : 'bad',
    )
    if (!matches) return
    const link = document.createElement('a')
    link.href = URL.createObjectURL(loaded.content)
    link.download = item.name.split('/').pop() || item.id
    link.click()
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000)
  } catch (error) {
    say(ui.downloadResult, `download failed: ${(error as Error).message}`, 'bad')
  }
}

async function toggleWatch(): Promise<void> {
  if (client === undefined) return
  if (watching !== undefined) {
    const stopping = watching
    watching = undefined
    ui.watch.textContent = 'Watch'
    await stopping.stop().catch(() => undefined)
    return
  }
  ui.watch.disabled = true
  try {
    const seen = new Set<string>()
    watching = await client.watch(domain(), (item) => {
      if (seen.has(item.id)) return
      seen.add(item.id)
      const line = document.createElement('li')
      line.dataset.id = item.id
      line.textContent = `${item.name} (${item.data_type}, ${item.size} bytes) ${item.id}`
      ui.live.prepend(line)
    })
    ui.watch.textContent = 'Stop watching'
    ui.watch.dataset.node = watching.node
    watching.done.catch((error: Error) => say(ui.status, `watch ended: ${error.message}`, 'bad'))
  } catch (error) {
    say(ui.status, `cannot watch: ${(error as Error).message}`, 'bad')
  } finally {
    ui.watch.disabled = false
  }
}

const peer = await startPeer()
say(ui.peer, `this page is peer ${peer.peerId.toString()}`)
ui.connect.addEventListener('click', () => void connect())
ui.upload.addEventListener('click', () => void upload())
ui.refresh.addEventListener('click', () => void refresh())
ui.watch.addEventListener('click', () => void toggleWatch())

const params = new URLSearchParams(location.search)
ui.domain.value = params.get('domain') ?? ui.domain.value
const manager = params.get('manager')
if (manager !== null) {
  ui.manager.value = manager
  await connect()
}
