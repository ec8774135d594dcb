#!/bin/sh
# hooks.on_event for boxmeter-collector: posts the usage event it gets on
# stdin (JSON, see README "Usage events delivered to a hook") to a webhook,
# signed with HMAC-SHA256. Exits 0 only when the receiver answered 2xx, so
# the collector retries the event otherwise.
#
#   BOXMETER_WEBHOOK_URL          where to POST (required); no secrets in it:
#                                 it is on curl's command line
#   BOXMETER_WEBHOOK_SECRET_FILE  a file holding the shared secret (required;
#                                 text, a final newline is not part of it)
#   BOXMETER_WEBHOOK_TIMEOUT      seconds to wait for the answer (default 10)
#
# The request: the event's JSON exactly as received, with
#   Content-Type: application/json
#   X-Boxmeter-Event-Id: <id>     (the idempotency key: a crash of the
#                                 collector can deliver an event twice)
#   X-Boxmeter-Signature: sha256=<hex of HMAC-SHA256(secret, body)>
# The HMAC is computed here (RFC 2104, two openssl sha256 passes) so that the
# secret never appears on a command line, where other users could read it.
set -eu

me=on-event-webhook
url=${BOXMETER_WEBHOOK_URL:-}
secret_file=${BOXMETER_WEBHOOK_SECRET_FILE:-}
timeout=${BOXMETER_WEBHOOK_TIMEOUT:-10}
if [ -z "$url" ]; then
  echo "$me: BOXMETER_WEBHOOK_URL is not set; set it to the URL to post usage events to" >&2
  exit 78
fi
if [ -z "$secret_file" ] || [ ! -r "$secret_file" ]; then
  echo "$me: cannot read the secret file \"$secret_file\" (BOXMETER_WEBHOOK_SECRET_FILE); set it to a file this user may read that holds the shared secret" >&2
  exit 78
fi
secret=$(cat "$secret_file")
if [ -z "$secret" ]; then
  echo "$me: the secret file \"$secret_file\" is empty; put the shared secret in it" >&2
  exit 78
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/body"
if [ ! -s "$work/body" ]; then
  echo "$me: no event on stdin; run it as hooks.on_event" >&2
  exit 65
fi
id=${BOXMETER_EVENT_ID:-$(sed -n 's/.*"id": *\([0-9][0-9]*\).*/\1/p' "$work/body")}

# The key's bytes in hex; a key longer than SHA-256's block (64 bytes) is
# hashed first, as RFC 2104 says.
key_hex=$(printf %s "$secret" | od -An -v -tx1 | tr -d ' \n')
if [ ${#key_hex} -gt 128 ]; then
  key_hex=$(printf %s "$secret" | openssl dgst -sha256 -binary | od -An -v -tx1 |
    tr -d ' \n')
fi
# The key padded to 64 bytes and XORed with ipad (0x36) and opad (0x5c), as
# printf octal escapes.
ipad=
opad=
rest=$key_hex
i=0
while [ $i -lt 64 ]; do
  byte=0
  if [ -n "$rest" ]; then
    byte=$((0x$(printf %.2s "$rest")))
    rest=${rest#??}
  fi
  ipad="$ipad\\$(printf %o $((byte ^ 0x36)))"
  opad="$opad\\$(printf %o $((byte ^ 0x5c)))"
  i=$((i + 1))
done
{ printf "$ipad"; cat "$work/body"; } | openssl dgst -sha256 -binary > "$work/inner"
signature=$({ printf "$opad"; cat "$work/inner"; } | openssl dgst -sha256 -r |
  cut -d' ' -f1)

status=$(curl -sS -o "$work/answer" -w '%{http_code}' --max-time "$timeout" \
  -X POST -H 'Content-Type: application/json' \
  -H "X-Boxmeter-Event-Id: $id" \
  -H "X-Boxmeter-Signature: sha256=$signature" \
  --data-binary "@$work/body" -- "$url") || {
  echo "$me: posting usage event $id to $url failed (curl exit $?); the collector retries it" >&2
  exit 75
}
case $status in
  2??) exit 0 ;;
esac
echo "$me: $url answered HTTP $status to usage event $id: $(head -c 300 "$work/answer" | tr -d '\r' | tr '\n' ' '); the collector retries it" >&2
exit 75
