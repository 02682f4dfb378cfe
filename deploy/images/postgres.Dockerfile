# Postgres 15 image for compose/docker-compose.yml, from the same debootstrap
# base as the trainq images (scripts/build-images.sh; Debian's own packages, no registry pull),
# plus trainq-migrate: psql, scripts/migrate.sh and db/ for the one-shot migration service.
# The server uses the repository's compose/postgresql.conf (the file scripts/services.sh
# uses), so the Compose stack and the test services run the same settings; the entrypoint adds
# only the listener and the credentials from the environment.
ARG BASE=trainq-base:bookworm

FROM ${BASE} AS postgres
ENV DEBIAN_FRONTEND=noninteractive
# postgresql-15 depends on LLVM for JIT compilation (130 MB of the image): trainq's queries are
# short OLTP statements JIT never pays off for, so the JIT provider and LLVM are deleted and the
# entrypoint runs with jit=off (without the provider Postgres would only log that JIT is
# unavailable). dpkg still lists libllvm14; nothing else in the image loads it.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* \
 && rm -rf /usr/lib/postgresql/15/lib/bitcode /usr/lib/postgresql/15/lib/llvmjit*.so \
      /usr/lib/x86_64-linux-gnu/libLLVM-14.so* \
 && mkdir -p /var/lib/postgresql/data /etc/trainq && chown postgres:postgres /var/lib/postgresql/data
COPY compose/postgresql.conf /etc/trainq/postgresql.conf
COPY deploy/images/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
USER postgres
ENV PGDATA=/var/lib/postgresql/data PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/bin:/bin
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
LABEL org.trainq.image=postgres

# Migrations run with the same psql as the server's; only db/ and migrate.sh are added.
FROM postgres AS migrate
COPY db /opt/trainq/db
COPY scripts/migrate.sh /opt/trainq/scripts/migrate.sh
USER nobody
ENTRYPOINT ["/bin/bash", "/opt/trainq/scripts/migrate.sh"]
LABEL org.trainq.image=migrate
