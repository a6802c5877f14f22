// The Durable Streams server conformance suite (@durable-streams/server-conformance-tests) against
// the server at DURABLE_STREAMS_URL. The suite's own CLI finds no tests under vitest 4, so this
// file registers them by calling runConformanceTests, as the protocol's repository does.
//   DURABLE_STREAMS_URL=http://127.0.0.1:8000 npx vitest run conformance.test.mjs
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.DURABLE_STREAMS_URL
if (!baseUrl) throw new Error("DURABLE_STREAMS_URL (the server's base URL) is not set")

runConformanceTests({ baseUrl })
