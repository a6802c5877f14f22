// The official TypeScript client (@durable-streams/client) follows a stream to its closure and
// prints what it read as one line of JSON. The argument is a JSON object:
//   url        the stream's URL (a job's links.durable_stream may carry ?token=)
//   live       "sse" | "long-poll"
//   resume     true: read from -1 until the first text arrives, drop that session, and resume
//              from the offset it had reached (a reader that saved its offset and came back)
//   headers    optional request headers (e.g. Authorization)
//   seconds    the bound on the whole read (default 30)
// Prints { text, prefix, savedOffset, offset, streamClosed, requests }: text is everything read
// (prefix included), prefix what the first session read before resuming, requests how many
// HTTP requests the client made (an SSE read the server closed is reconnected by a new one).
import { stream } from "@durable-streams/client"

const args = JSON.parse(process.argv[2] ?? "{}")
const { url, live, resume = false, headers = {} } = args
const bound = setTimeout(() => {
  console.error(`follow.mjs: no closure within ${args.seconds ?? 30} s`)
  process.exit(2)
}, (args.seconds ?? 30) * 1000)

/** Read from `offset` until `stop(text so far)` or the stream's closure. */
let requests = 0
const counted = (...request) => {
  requests += 1
  return fetch(...request)
}

async function read(offset, stop = () => false) {
  const res = await stream({ url, offset, live, headers, warnOnHttp: false, fetch: counted })
  let text = ""
  let last = { offset }
  await new Promise((resolve, reject) => {
    res.subscribeText((chunk) => {
      text += chunk.text
      last = chunk
      if (chunk.streamClosed || stop(text)) resolve()
    })
    res.closed.then(resolve, reject)
  })
  res.cancel()
  // What this session delivered ends at its last chunk's offset: the handle's own may already
  // be past it (the client reads ahead of its subscriber), and resuming there would skip text.
  // The closure may come without text (an SSE control event): the session has seen it.
  const reached = text ? last.offset : (res.offset ?? last.offset)
  return { text, offset: reached, streamClosed: res.streamClosed }
}

let prefix = ""
let savedOffset = "-1"
if (resume) {
  const first = await read("-1", (text) => text.length > 0)
  prefix = first.text
  savedOffset = first.offset
}
const rest = await read(savedOffset)
clearTimeout(bound)
console.log(JSON.stringify({
  text: prefix + rest.text,
  prefix,
  savedOffset,
  offset: rest.offset,
  streamClosed: rest.streamClosed,
  requests,
}))
