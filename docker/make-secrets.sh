#!/bin/sh
# Make the secrets of docker-compose.secure.yml once: a random password per principal (and the
# controller's own login), and each principal's Kafka client properties, in .state/secure (mode 0600).
set -eu
umask 077
D=.state/secure
mkdir -p "$D"
for p in admin pipeline producer crossings-reader partner controller; do
  f="$D/$(echo "$p" | tr - _)_password"
  [ -f "$f" ] || head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > "$f"
  [ "$p" = controller ] && continue
  printf 'security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";\n' \
    "$p" "$(cat "$f")" > "$D/$p.properties"
done
[ -f .state/pseudonym.key ] || head -c 32 /dev/urandom > .state/pseudonym.key
echo "secrets in $D"
