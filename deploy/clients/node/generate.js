// Call an Enclave server from Node.js using only the .proto (no Enclave code).
//   npm install && node generate.js "What does BID mean on a chart?"
// Environment: ENCLAVE_TARGET (host:port, default 127.0.0.1:50051), ENCLAVE_TOKEN (bearer token),
// ENCLAVE_CA (CA certificate PEM: turns TLS on), ENCLAVE_MODEL, ENCLAVE_ADAPTER.
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO = process.env.ENCLAVE_PROTO || path.join(__dirname, "../../../proto/enclave/v1/inference.proto");
const def = protoLoader.loadSync(PROTO, { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true });
const enclave = grpc.loadPackageDefinition(def).enclave.v1;

const target = process.env.ENCLAVE_TARGET || "127.0.0.1:50051";
const creds = process.env.ENCLAVE_CA
  ? grpc.credentials.createSsl(fs.readFileSync(process.env.ENCLAVE_CA))
  : grpc.credentials.createInsecure();
const client = new enclave.Inference(target, creds);
const metadata = new grpc.Metadata();
if (process.env.ENCLAVE_TOKEN) metadata.add("authorization", `Bearer ${process.env.ENCLAVE_TOKEN}`);

const request = {
  model: process.env.ENCLAVE_MODEL || "",
  adapter: process.env.ENCLAVE_ADAPTER || "",
  chat: { messages: [{ role: "user", content: process.argv[2] || "What does BID mean on a chart?" }] },
  sampling: { max_tokens: 48 },
};
const deadline = new Date(Date.now() + 120_000);

client.Generate(request, metadata, { deadline }, (err, reply) => {
  if (err) {
    console.error(`error: ${grpc.status[err.code]}: ${err.details}`);
    process.exit(1);
  }
  console.log(reply.text);
  console.error(`[${reply.model} v${reply.model_version}, ${reply.usage.completion_tokens} tokens, ${reply.finish_reason}]`);
  // Streaming: one message per piece, the last one with the finish reason.
  const stream = client.GenerateStream(request, metadata, { deadline });
  let streamed = "";
  stream.on("data", (m) => { streamed += m.text; if (m.finish_reason !== "FINISH_REASON_UNSPECIFIED") console.error(`[stream: ${m.finish_reason}]`); });
  stream.on("error", (e) => { console.error(`error: ${grpc.status[e.code]}: ${e.details}`); process.exit(1); });
  stream.on("end", () => { console.log(streamed === reply.text ? "stream matches" : "stream differs"); client.close(); });
});
