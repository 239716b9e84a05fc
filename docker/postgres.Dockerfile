# A small PostgreSQL image from Debian's `postgresql` package, for machines that cannot pull the
# official `postgres:16` (tests/docker builds it on its local Debian base and swaps it in with
# tests/docker/compose.test.yml; docker-compose.yml keeps postgres:16). It honours the same
# interface: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, data in /var/lib/postgresql/data,
# `pg_isready` on PATH, port 5432.
#   docker build --network host -f docker/postgres.Dockerfile --build-arg BASE_IMAGE=debian:bookworm-slim .
# (apt-get needs the Debian mirror during the build only.)
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
LABEL org.natsbench.image=postgres

# No cluster from the package's postinst: the entrypoint creates one in PGDATA on first start.
RUN set -eu; \
    mkdir -p /etc/postgresql-common; \
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; \
    apt-get update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
    rm -rf /var/lib/apt/lists/*; \
    ln -s "$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)" /usr/local/lib/pgbin; \
    mkdir -p /var/lib/postgresql/data /run/postgresql; \
    chown -R postgres:postgres /var/lib/postgresql /run/postgresql; \
    chmod 700 /var/lib/postgresql/data

ENV PATH=/usr/local/lib/pgbin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
CMD ["/bin/sh", "/usr/local/bin/postgres-entrypoint.sh"]
