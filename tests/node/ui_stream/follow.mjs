// Follows one reviewstream job with the AI SDK's own client: DefaultChatTransport's
// reconnectToStream (what useChat({ resume: true }) calls on mount) and readUIMessageStream (how
// the SDK assembles the parts into a message). Prints one JSON line: every chunk the transport
// parsed, the assembled message's text and metadata, and the errors the client surfaced.
//
//   node follow.mjs <base URL> <job id> [<bearer token>]
import { DefaultChatTransport, readUIMessageStream } from "ai";

const [base, jobId, token] = process.argv.slice(2);
if (!base || !jobId) {
  console.error("usage: node follow.mjs <base URL> <job id> [<bearer token>]");
  process.exit(2);
}

const transport = new DefaultChatTransport({
  api: `${base}/jobs`,
  headers: token ? { Authorization: `Bearer ${token}` } : undefined,
});

const result = { chunks: [], text: null, messageId: null, metadata: null, errors: [] };
try {
  const stream = await transport.reconnectToStream({ chatId: jobId });
  if (stream === null) throw new Error("the server answered 204: no stream");
  const [forMessages, forChunks] = stream.tee();
  const recording = (async () => {
    for await (const chunk of forChunks) result.chunks.push(chunk);
  })();
  const messages = readUIMessageStream({
    stream: forMessages,
    terminateOnError: true,
    onError: (error) => result.errors.push(String(error?.message ?? error)),
  });
  try {
    for await (const message of messages) {
      result.messageId = message.id;
      result.metadata = message.metadata ?? null;
      result.text = message.parts
        .filter((part) => part.type === "text")
        .map((part) => part.text)
        .join("");
    }
  } catch (error) {
    // terminateOnError: the stream's error part ends the iteration with the error.
    result.thrown = String(error?.message ?? error);
  }
  await recording;
} catch (error) {
  result.failed = String(error?.message ?? error);
  result.status = error?.statusCode ?? null;
}
process.stdout.write(JSON.stringify(result) + "\n");
