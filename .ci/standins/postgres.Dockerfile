# Stand-in for postgres:16 (Debian's PostgreSQL 15), honouring the official image's contract:
# POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, POSTGRES_INITDB_ARGS, PGDATA
# (/var/lib/postgresql/data), a UTF8 cluster, password auth from the network, pg_isready.
ARG DEBIAN=quanta-standin/debian:bookworm
FROM ${DEBIAN}
ENV DEBIAN_FRONTEND=noninteractive PGDATA=/var/lib/postgresql/data \
    PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* && mkdir -p "$PGDATA" && chown postgres: "$PGDATA"
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
