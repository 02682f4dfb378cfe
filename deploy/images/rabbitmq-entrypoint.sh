#!/bin/bash
# RabbitMQ for the Compose stack: compose/rabbitmq.conf plus the listener and the trainq user
# from the environment, then `exec rabbitmq-server` (PID 1, logs on the console).
#   TRAINQ_AMQP_PORT (5672), TRAINQ_AMQP_LISTEN (127.0.0.1), TRAINQ_AMQP_PASSWORD (trainq),
#   ERL_EPMD_PORT (4369) and RABBITMQ_DIST_PORT (25672): with host networking these are host
#   ports too, so the Compose file moves them off the defaults another broker may hold.
set -euo pipefail
PORT=${TRAINQ_AMQP_PORT:-5672}
LISTEN=${TRAINQ_AMQP_LISTEN:-127.0.0.1}
PASSWORD=${TRAINQ_AMQP_PASSWORD:-trainq}
[[ $PORT =~ ^[0-9]{1,5}$ ]] || { echo "rabbitmq-entrypoint: invalid TRAINQ_AMQP_PORT \"$PORT\"" >&2; exit 2; }
# cuttlefish values end at the line's end: a newline in the password would add a setting.
[[ $PASSWORD != *$'\n'* && -n $PASSWORD ]] || { echo "rabbitmq-entrypoint: invalid TRAINQ_AMQP_PASSWORD" >&2; exit 2; }
{
  cat /etc/trainq/rabbitmq.conf
  echo
  echo "# added by rabbitmq-entrypoint"
  echo "listeners.tcp.1 = $LISTEN:$PORT"
  echo "default_user = trainq"
  echo "default_pass = $PASSWORD"
  echo "log.console = true"
  echo "log.file = false"
} >/etc/rabbitmq/rabbitmq.conf
echo '[].' >/etc/rabbitmq/enabled_plugins
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_listen_options [{ip,{127,0,0,1}}]"
exec /usr/lib/rabbitmq/bin/rabbitmq-server
