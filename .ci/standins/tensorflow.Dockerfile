# Stand-in for tensorflow/tensorflow:2.21.0-gpu on a machine that cannot pull it: Debian's
# Python with tensorflow-cpu 2.21.0 from PyPI, `python` and `pip` on the PATH and a system
# pip that installs (as in the official image). Used only by .ci/compose-check.
# extra-ca/ holds the host's own certificate authorities (/usr/local/share/ca-certificates,
# e.g. an egress proxy's), so that pip reaches PyPI from the image as it does from the host.
ARG DEBIAN=quanta-standin/debian:bookworm
FROM ${DEBIAN}
ENV DEBIAN_FRONTEND=noninteractive
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends python3 python3-pip python-is-python3 \
       ca-certificates procps \
    && update-ca-certificates >/dev/null \
    && rm -rf /var/lib/apt/lists/* /usr/lib/python3*/EXTERNALLY-MANAGED \
    && pip install --no-cache-dir -q "tensorflow-cpu==2.21.0"
