// The client scripts (follow.mjs, produce.mjs) against the protocol's reference server
// (@durable-streams/server, in memory on 127.0.0.1): the scripts themselves are known good before
// they meet reviewstream. Streams are written here with plain fetch, a word every 100 ms.
//   node against_reference.mjs      exits 0 when every case reads as the reference server allows
// The reference server's SSE framing drops the space after "data:", so a payload's own leading
// space is lost: over SSE the text read there equals what was written only once spaces are
// ignored (and differs from it), where reviewstream must give it exactly
// (tests/web/test_durable_streams_clients.py). Long-poll reads are exact on both.
import { spawn } from "node:child_process"
import { DurableStreamTestServer } from "@durable-streams/server"

const WORDS = [" The", " quick", "\n\nbrown", "  fox", " data:", " naïve", " 🚀", "\n", " done."]
const written = WORDS.join("")
const server = new DurableStreamTestServer({ port: 0, host: "127.0.0.1", longPollTimeout: 500 })
await server.start()

function run(script, arg) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script, JSON.stringify(arg)], {
      cwd: import.meta.dirname, stdio: ["ignore", "pipe", "inherit"],
    })
    let out = ""
    child.stdout.on("data", (d) => { out += d })
    child.on("exit", (code) => resolve(code === 0 ? JSON.parse(out.trim().split("\n").pop()) : { code }))
  })
}

async function writtenSlowly(name) {
  const url = `${server.url}/v1/stream/${name}`
  const text = { "content-type": "text/plain" }
  await fetch(url, { method: "PUT", headers: text })
  const writing = (async () => {
    for (const word of WORDS) {
      await new Promise((r) => setTimeout(r, 100))
      await fetch(url, { method: "POST", headers: text, body: word })
    }
    await fetch(url, { method: "POST", headers: { "Stream-Closed": "true" } })
  })()
  return { url, writing }
}

const noSpaces = (s) => s.replaceAll(" ", "")
const verdict = (live, read) =>
  live === "long-poll" ? read === written : read !== written && noSpaces(read) === noSpaces(written)

let ok = true
for (const live of ["long-poll", "sse"]) {
  for (const resume of [false, true]) {
    const { url, writing } = await writtenSlowly(`follow-${live}-${resume}`)
    const got = await run("follow.mjs", { url, live, resume })
    await writing
    const good = verdict(live, got.text) && got.streamClosed === true &&
      (!resume || (got.prefix !== "" && got.savedOffset !== "-1"))
    ok &&= good
    console.log(`${good ? "as expected" : "UNEXPECTED"}  follow.mjs live=${live} resume=${resume}:`,
      JSON.stringify(got))
  }
}
const got = await run("produce.mjs", { url: `${server.url}/v1/stream/produced`, words: WORDS })
const good = got.written === written && verdict("sse", got.read) && got.readerClosed === true
ok &&= good
console.log(`${good ? "as expected" : "UNEXPECTED"}  produce.mjs:`, JSON.stringify(got))
await server.stop()
process.exit(ok ? 0 : 1)
