// The official TypeScript client writes a stream with its IdempotentProducer while its reader
// follows the same stream live by SSE from -1 to the closure; prints one line of JSON. The
// argument is a JSON object:
//   url        where to create the stream (PUT), e.g. <base>/v1/stream/<name>
//   words      the payloads, appended one by one (words with their leading spaces)
//   pauseMs    the pause between appends, so that the reader gets them live (default 20)
//   headers    optional request headers for every request (e.g. Authorization)
//   seconds    the bound on the whole run (default 30)
// Prints { written, read, closedOffset, readerClosed }.
import { DurableStream, IdempotentProducer, stream } from "@durable-streams/client"

const args = JSON.parse(process.argv[2] ?? "{}")
const { url, words, pauseMs = 20, headers = {} } = args
const bound = setTimeout(() => {
  console.error(`produce.mjs: not done within ${args.seconds ?? 30} s`)
  process.exit(2)
}, (args.seconds ?? 30) * 1000)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const handle = await DurableStream.create({
  url, contentType: "text/plain", headers, warnOnHttp: false,
})

// The reader starts before the first append: it reads the empty stream, then follows live.
const reader = await stream({ url, offset: "-1", live: "sse", headers, warnOnHttp: false })
let read = ""
const readDone = new Promise((resolve, reject) => {
  reader.subscribeText((chunk) => {
    read += chunk.text
    if (chunk.streamClosed) resolve()
  })
  reader.closed.then(resolve, reject)
})

let failure = null
const producer = new IdempotentProducer(handle, "words", {
  lingerMs: 0,
  onError: (error) => { failure = error },
})
for (const word of words) {
  producer.append(word)
  await sleep(pauseMs)
}
const closed = await producer.close()
await readDone
// The closure may come without text (an SSE control event): the session has seen it.
const readerClosed = reader.streamClosed
reader.cancel()
clearTimeout(bound)
if (failure) throw failure
console.log(JSON.stringify({
  written: words.join(""),
  read,
  closedOffset: closed.finalOffset,
  readerClosed,
}))
