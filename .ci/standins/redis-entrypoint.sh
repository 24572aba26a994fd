#!/bin/sh
# The official redis image's start, in short: as the redis user, protected mode off unless
# a config file or the option is given.
set -eu
if [ "${1:-}" = redis-server ]; then
  case " $* " in *" --protected-mode "*|*".conf "*) ;; *) set -- "$@" --protected-mode no ;; esac
  chown -R redis: /data
  exec runuser -u redis -- "$@"
fi
exec "$@"
