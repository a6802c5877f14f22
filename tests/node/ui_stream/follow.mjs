// Follows one reviewstream job with the AI SDK's own client, as a front end does. Prints one
// JSON line.
//
//   node follow.mjs <base URL> <job id> [--token T] [--chat] [--persisted TEXT]
//
// Without --chat: DefaultChatTransport.reconnectToStream (what useChat({ resume: true }) calls on
// mount) and readUIMessageStream (how the SDK assembles parts into a message): every chunk the
// transport parsed, the message's text and metadata, the errors the client surfaced.
//
// With --chat: the SDK's chat itself (AbstractChat, which useChat wraps in React state) on an
// in-memory state, resumed with chat.resumeStream() as useChat({ id, resume: true }) does on
// mount: its messages, status, error, the data parts handed to onData and what onFinish got.
// --persisted TEXT starts the chat with the job's message already there, holding TEXT (a page
// reloaded mid-review that had stored its messages).
import { AbstractChat, DefaultChatTransport, readUIMessageStream } from "ai";

const args = process.argv.slice(2);
const [base, jobId] = args;
const option = (name) => {
  const at = args.indexOf(name);
  return at === -1 ? undefined : args[at + 1];
};
if (!base || !jobId) {
  console.error("usage: node follow.mjs <base URL> <job id> [--token T] [--chat] [--persisted TEXT]");
  process.exit(2);
}
const token = option("--token");
const transport = new DefaultChatTransport({
  api: `${base}/jobs`,
  headers: token ? { Authorization: `Bearer ${token}` } : undefined,
});
const message = (m) => ({
  id: m.id,
  role: m.role,
  text: m.parts.filter((part) => part.type === "text").map((part) => part.text).join(""),
  metadata: m.metadata ?? null,
});
const text = (error) => String(error?.message ?? error);

async function followStream() {
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
      onError: (error) => result.errors.push(text(error)),
    });
    try {
      for await (const m of messages) {
        ({ id: result.messageId, text: result.text, metadata: result.metadata } = message(m));
      }
    } catch (error) {
      result.thrown = text(error); // terminateOnError: the error part ends the iteration
    }
    await recording;
  } catch (error) {
    result.failed = text(error);
    result.status = error?.statusCode ?? null;
  }
  return result;
}

class MemoryState {
  constructor(messages) {
    this.messages = messages;
    this.status = "ready";
    this.error = undefined;
  }
  pushMessage = (m) => {
    this.messages = this.messages.concat(m);
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, m) => {
    this.messages = [...this.messages.slice(0, index), m, ...this.messages.slice(index + 1)];
  };
  snapshot = (thing) => structuredClone(thing);
}

class Chat extends AbstractChat {
  constructor({ messages, ...init }) {
    super({ ...init, state: new MemoryState(messages) });
  }
}

async function followChat() {
  const persisted = option("--persisted");
  const result = { data: [], errors: [], finish: null };
  const chat = new Chat({
    id: jobId,
    transport,
    messages:
      persisted === undefined
        ? []
        : [{ id: jobId, role: "assistant", parts: [{ type: "text", text: persisted, state: "streaming" }] }],
    onData: (part) => result.data.push(part),
    onError: (error) => result.errors.push(text(error)),
    onFinish: ({ isAbort, isDisconnect, isError, finishReason }) => {
      result.finish = { isAbort, isDisconnect, isError, finishReason: finishReason ?? null };
    },
  });
  await chat.resumeStream();
  result.status = chat.status;
  result.error = chat.error ? text(chat.error) : null;
  result.messages = chat.messages.map(message);
  return result;
}

const result = args.includes("--chat") ? await followChat() : await followStream();
process.stdout.write(JSON.stringify(result) + "\n");
