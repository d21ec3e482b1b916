// The page in a real Chromium (Debian's, driven by playwright-core) against a loopback cluster
// of this repository's binaries: js-libp2p in the browser on one side, our nodes on the other.

import { randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { chromium, type Browser, type Page } from 'playwright-core'
import { preview, type PreviewServer } from 'vite'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { LoopbackCluster } from './cluster'

/** Chromium flags that work on a machine with no internet (see the README). */
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]

const DOMAIN = 'browser-test'
/** Past 2 MB an unpatched js-yamux sent frames our yamux refused; 50 MiB is well past it. */
const LARGE = 50 * 1024 * 1024
/** Each run's screenshot; with `UPDATE_SCREENSHOT=1` it also replaces the README's. */
const SCREENSHOTS = [resolve(import.meta.dirname, '../test-results/screenshot.png')].concat(
  process.env.UPDATE_SCREENSHOT === '1' ? [resolve(import.meta.dirname, '../screenshot.png')] : [],
)

let cluster: LoopbackCluster
let server: PreviewServer
let browser: Browser
let page: Page

beforeAll(async () => {
  cluster = await LoopbackCluster.start()
  // The page as `vite build` left it in dist/, on a port the system picks.
  server = await preview({
    root: resolve(import.meta.dirname, '..'),
    logLevel: 'warn',
    preview: { host: '127.0.0.1', port: 0, strictPort: false },
  })
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
  })
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 800 } })
  page = await context.newPage()
  page.on('pageerror', (error) => console.error(`page error: ${error.message}`))
  const url = new URL(server.resolvedUrls!.local[0]!)
  url.searchParams.set('manager', cluster.managerWebSocket)
  url.searchParams.set('domain', DOMAIN)
  await page.goto(url.toString())
  await page.locator('#status.ok').waitFor({ timeout: 60_000 })
})

afterAll(async () => {
  await browser?.close()
  await server?.close()
  await cluster?.stop()
})

/** The root the Rust implementation computes for `path`, with `domain hash`. */
async function rustRoot(path: string): Promise<string> {
  const line = await cluster.domain('hash', path)
  return line.trim().split(/\s+/)[0]!
}

describe('the browser page', () => {
  it('uploads 50 MiB, lists it, and downloads the same bytes with matching roots', async () => {
    const path = join(cluster.dir, 'scan.bin')
    const content = randomBytes(LARGE)
    writeFileSync(path, content)

    await page.setInputFiles('#files', path)
    await page.click('#upload')
    const uploaded = page.locator('#uploaded li', { hasText: 'scan.bin' })
    await uploaded.waitFor({ timeout: 180_000 })
    await expect.poll(() => page.locator('#upload-rate').getAttribute('class')).toBe('ok')
    const id = (await uploaded.getAttribute('data-id'))!
    // Three implementations agree: the page's (hash-wasm leaves, @noble/hashes nodes), the
    // node's, `domain hash`.
    const pageRoot = (await uploaded.locator('code').nth(1).textContent())!
    expect(pageRoot).toBe(await rustRoot(path))

    const row = page.locator(`#items tr[data-id="${id}"]`)
    await row.waitFor({ timeout: 30_000 })
    expect(await row.locator('td').nth(2).textContent()).toBe(String(LARGE))
    for (const path of SCREENSHOTS) await page.screenshot({ path, fullPage: true })

    const [download] = await Promise.all([
      page.waitForEvent('download', { timeout: 180_000 }),
      row.locator('button.download').click(),
    ])
    const saved = join(cluster.dir, 'scan-copy.bin')
    await download.saveAs(saved)
    expect(readFileSync(saved).equals(content)).toBe(true)
    expect(await page.locator('#download-result').getAttribute('class')).toBe('ok')
    expect(await page.locator('#download-result').textContent()).toContain(pageRoot)

    // Figures, not assertions (the machine is shared), with a baseline of the same run: the
    // Rust client uploading the same file over TCP.
    console.log(`browser upload: ${await page.locator('#upload-rate').textContent()}`)
    console.log(`browser download: ${await page.locator('#download-result').textContent()}`)
    const started = performance.now()
    await cluster.domain('upload', path, '--domain', DOMAIN, '--name', 'scan-by-cli.bin')
    const seconds = (performance.now() - started) / 1000
    console.log(`browser baseline: the domain CLI uploaded the same 50 MiB in ${seconds.toFixed(2)} s, ${(50 / seconds).toFixed(1)} MiB/s`)
  })

  it('uploads several files on one stream, the empty one and chunk boundaries included', async () => {
    // Sizes with a reason each: no bytes (one empty leaf), one leaf exactly, one byte into
    // the second leaf, three leaves and a bit (an unbalanced tree).
    const sizes = { 'empty.txt': 0, 'leaf.bin': 7168, 'two-leaves.bin': 7169, 'mesh.obj': 3 * 7168 + 100 }
    const paths = Object.entries(sizes).map(([name, size]) => {
      const path = join(cluster.dir, name)
      writeFileSync(path, randomBytes(size))
      return path
    })
    await page.setInputFiles('#files', paths)
    await page.click('#upload')
    for (const path of paths) {
      const name = path.split('/').pop()!
      const line = page.locator('#uploaded li', { hasText: name })
      await line.waitFor({ timeout: 60_000 })
      expect(await line.locator('code').nth(1).textContent(), name).toBe(await rustRoot(path))
    }
  })

  it('shows live an item the CLI uploads while it watches, and stops on request', async () => {
    await page.click('#watch')
    await page.locator('#watch', { hasText: 'Stop watching' }).waitFor({ timeout: 30_000 })
    // What is there already comes first: the large upload of the test before, or nothing.
    const path = join(cluster.dir, 'note.txt')
    writeFileSync(path, 'a note from the command line\n')
    await cluster.domain('upload', path, '--domain', DOMAIN, '--type', 'text/plain')
    await page.locator('#live li', { hasText: 'note.txt' }).waitFor({ timeout: 30_000 })

    await page.click('#watch')
    await page.locator('#watch', { hasText: /^Watch$/ }).waitFor({ timeout: 30_000 })
    // The node ended the subscription cleanly: no error on the page.
    expect(await page.locator('#status').getAttribute('class')).toBe('ok')
  })

  it('stores items the CLI lists next to its own: one domain, two implementations', async () => {
    const listing = await cluster.domain('ls', '--domain', DOMAIN)
    expect(listing).toContain('scan.bin')
    expect(listing).toContain('note.txt')
  })
})
