# Stand-in for redis:7 (Debian's Redis 7.0): redis-server and redis-cli on the PATH, data
# in /data, and, as the official image does, protected mode off when no config is given.
ARG DEBIAN=quanta-standin/debian:bookworm
FROM ${DEBIAN}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis: /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["redis-server"]
