#!/bin/sh
# Start the SCRAM-secured broker of docker-compose.secure.yml: fill the passwords into its config,
# format the storage once with a SCRAM credential per principal, then run the broker.
set -eu
S=/run/secrets
sed -e "s|@ADMIN_PASSWORD@|$(cat $S/admin_password)|" -e "s|@CONTROLLER_PASSWORD@|$(cat $S/controller_password)|" \
    /etc/crosspaths/secure-server.properties.in > /tmp/server.properties
chmod 600 /tmp/server.properties
if [ ! -f /var/lib/kafka/data/meta.properties ]; then
  /opt/kafka/bin/kafka-storage.sh format -t "${CLUSTER_ID:-crosspaths-docker-0001}" -c /tmp/server.properties \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$(cat $S/admin_password)]" \
    --add-scram "SCRAM-SHA-512=[name=pipeline,password=$(cat $S/pipeline_password)]" \
    --add-scram "SCRAM-SHA-512=[name=producer,password=$(cat $S/producer_password)]" \
    --add-scram "SCRAM-SHA-512=[name=crossings-reader,password=$(cat $S/crossings_reader_password)]" \
    --add-scram "SCRAM-SHA-512=[name=partner,password=$(cat $S/partner_password)]"
fi
exec /opt/kafka/bin/kafka-server-start.sh /tmp/server.properties
