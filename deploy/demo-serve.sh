#!/usr/bin/env bash
# `make demo`, step 5: serve the demo's model repository over gRPC with TLS and a token (a test CA
# and a token made here, as an operator would), call it with `enclave client` (unary and
# streaming; the tuned adapter unmerged on the int4 base, in one batch with requests for the base;
# a system prompt sent twice, the second time from the prefix cache), call its OpenAI-compatible
# API with the openai SDK (a chat answer, and an extraction constrained to a JSON schema), print a
# few lines of /metrics and the audit log, verify the audit chain, then drain with SIGTERM.
# Usage: deploy/demo-serve.sh REPO   (ports: $ENCLAVE_DEMO_PORT, default 50051; $ENCLAVE_DEMO_HTTP_PORT,
# 8000; $ENCLAVE_DEMO_METRICS_PORT, 9464)
set -euo pipefail
BIN=${BIN:-.venv/bin}
REPO=$1
PORT=${ENCLAVE_DEMO_PORT:-50051}
METRICS=${ENCLAVE_DEMO_METRICS_PORT:-9464}
HTTP=${ENCLAVE_DEMO_HTTP_PORT:-8000}
LOG=$(mktemp -t enclave-serve.XXXXXX)
SECRETS=$(mktemp -d -t enclave-secrets.XXXXXX)
"$BIN/enclave" serve cert create "$SECRETS/tls" --host localhost --host 127.0.0.1 | sed 's/^/  /'
TOKEN=$("$BIN/enclave" serve token create --name demo --role reader --tokens-file "$SECRETS/tokens.yaml")
T=(--target "localhost:$PORT" --ca "$SECRETS/tls/ca.pem" --token "$TOKEN")
rm -f "$REPO"/audit.jsonl*

"$BIN/enclave" serve --repo "$REPO" --port "$PORT" --metrics-port "$METRICS" --http-port "$HTTP" default_model=clinical-legal \
  "adapters.smollm2-int4=[clinical-legal]" "audit_log=$REPO/audit.jsonl" "tls.cert=$SECRETS/tls/server.pem" \
  "tls.key=$SECRETS/tls/server.key" "auth.tokens_file=$SECRETS/tokens.yaml" >"$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$SECRETS"' EXIT
for _ in $(seq 180); do
  "$BIN/enclave" client health "${T[@]}" >/dev/null 2>&1 && break
  kill -0 $PID 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 1
done
grep -E "ready on|serving" "$LOG" | sed 's/^/  server: /'
"$BIN/enclave" client models "${T[@]}"
echo "Q: A patient's chart says 'PRN'. What does that mean?   (clinical-legal: the compressed model, ONNX int8)"
"$BIN/enclave" client generate "A patient's chart says 'PRN'. What does that mean?" --chat --max-tokens 48 "${T[@]}"
echo "Q: Explain briefly what 'habeas corpus' means in law.   (smollm2-int4 + the clinical-legal adapter, unmerged, streamed)"
"$BIN/enclave" client stream "Explain briefly what 'habeas corpus' means in law." --chat --model smollm2-int4 --adapter clinical-legal --max-tokens 48 "${T[@]}"
echo "-- four requests at once on smollm2-int4, two with the adapter and two without: one batch, one step per token --"
ENCLAVE_TOKEN="$TOKEN" "$BIN/python" - "localhost:$PORT" "$SECRETS/tls/ca.pem" <<'PY'
import concurrent.futures as cf, os, sys
from enclave.grpc_client import Client
q = "A patient's chart says 'PRN'. What does that mean?"
with Client(sys.argv[1], token=os.environ["ENCLAVE_TOKEN"], ca=sys.argv[2]) as c, cf.ThreadPoolExecutor(4) as pool:
    asks = ["clinical-legal", "", "clinical-legal", ""]
    answers = pool.map(lambda a: c.generate(q, chat=True, model="smollm2-int4", adapter=a, max_tokens=48), asks)
    for adapter, r in zip(asks, answers):
        print(f"  {adapter or 'base':15s} {r.text.strip().splitlines()[0][:100]}")
PY
POLICY="You answer questions from the nursing staff of a hospital ward. Answer in one or two sentences, \
in plain words, and say when the answer depends on the patient's chart or on a physician's order. \
Never guess a dose. Abbreviations are the ones of the hospital's medication policy: BID twice a day, \
TID three times a day, QID four times a day, PRN as needed, STAT at once, PO by mouth, IV intravenous."
echo "-- the same ward system prompt with two questions: the second prefills only its question (prefix cache) --"
for q in "What does TID mean?" "What does PO mean?"; do
  "$BIN/enclave" client generate "$q" --system "$POLICY" --model smollm2-int4 --adapter clinical-legal --max-tokens 32 "${T[@]}"
done
echo "-- the same server through its OpenAI-compatible API: the openai SDK over HTTPS, the same certificate and token --"
ENCLAVE_TOKEN="$TOKEN" "$BIN/python" - "$HTTP" "$SECRETS/tls/ca.pem" clinical-legal <<'PY'
import json, os, sys
import jsonschema, openai
port, ca, model = sys.argv[1:4]
client = openai.OpenAI(base_url=f"https://localhost:{port}/v1", api_key=os.environ["ENCLAVE_TOKEN"],
                       http_client=openai.DefaultHttpxClient(verify=ca), max_retries=0)
chat = client.chat.completions.create(model=model, max_tokens=48, temperature=0,
    messages=[{"role": "user", "content": "A patient's chart says 'QID'. What does that mean?"}])
print(f"  chat ({chat.model}): {chat.choices[0].message.content.strip().splitlines()[0][:100]}")
schema = {"type": "object", "additionalProperties": False, "required": ["drug", "dose_mg", "route", "as_needed"],
          "properties": {"drug": {"type": "string", "maxLength": 40}, "dose_mg": {"type": "integer", "minimum": 0, "maximum": 5000},
                         "route": {"enum": ["oral", "intravenous", "intramuscular", "topical"]}, "as_needed": {"type": "boolean"}}}
answer = client.chat.completions.create(model=model, max_tokens=96, temperature=0,
    messages=[{"role": "system", "content": "Extract the medication order from the note as JSON."},
              {"role": "user", "content": "Chart note: paracetamol 500 mg PO PRN for pain."}],
    response_format={"type": "json_schema", "json_schema": {"name": "medication_order", "schema": schema, "strict": True}})
order = json.loads(answer.choices[0].message.content)
jsonschema.validate(order, schema)
print(f"  extracted ({answer.usage.completion_tokens} tokens, valid against the schema): {json.dumps(order)}")
PY
echo "-- a few lines of http://127.0.0.1:$METRICS/metrics --"
"$BIN/python" -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$METRICS/metrics').read().decode())" \
  | grep -E '^enclave_(requests_total|generation_tokens_total|time_to_first_token_seconds_(sum|count)|num_requests_running|batch_adapters_(bucket|count)|prefix_cache_(queries|hits)_total)' \
  | grep -v 'le="\(3\|4\|6\|8\|16\).0"' || true
echo "-- the audit log: one hash-chained line per request, no text --"
tail -n 1 "$REPO/audit.jsonl"
kill -TERM $PID
wait $PID && echo "server drained and stopped (exit 0)"
"$BIN/enclave" audit verify "$REPO/audit.jsonl"
rm -rf "$SECRETS"
trap - EXIT
