# RabbitMQ 3.10 image for compose/docker-compose.yml, from the same debootstrap base as the
# trainq images (scripts/build-images.sh; Debian's package, no registry pull). It runs the
# repository's compose/rabbitmq.conf (the file scripts/services.sh uses); the entrypoint adds
# only the listener and the credentials from the environment.
ARG BASE=trainq-base:bookworm

FROM ${BASE} AS rabbitmq
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* \
 && mkdir -p /etc/trainq && chown rabbitmq:rabbitmq /etc/rabbitmq
COPY compose/rabbitmq.conf /etc/trainq/rabbitmq.conf
COPY deploy/images/rabbitmq-entrypoint.sh /usr/local/bin/rabbitmq-entrypoint
USER rabbitmq
ENV HOME=/var/lib/rabbitmq RABBITMQ_NODENAME=rabbit@localhost
VOLUME /var/lib/rabbitmq
ENTRYPOINT ["/usr/local/bin/rabbitmq-entrypoint"]
LABEL org.trainq.image=rabbitmq
