#!/bin/sh
# The container's start (deploy/docker/Dockerfile):
# - with arguments, runs `hsmd ARGUMENTS` (hsmd tenant ..., hsmd audit verify ...);
# - with a config at $HSMD_CONFIG (/etc/hsmd/hsmd.toml) mounted, serves it (production: your
#   PKI, master secret and settings);
# - otherwise makes, once, a development set-up in the state volume $HSMD_STATE (/var/lib/hsmd;
#   hsmd init: a PKI, a master secret, a "demo" tenant), listening on $HSMD_LISTEN (all
#   interfaces, port 7443) with /metrics and /healthz on $HSMD_METRICS_LISTEN (port 9464), in
#   the tenancy HSMD_TENANCY asks for ("multi", the default, or "single" for the tenant
#   HSMD_TENANT, "demo" by default), and serves it.
set -eu
if [ "$#" -gt 0 ]; then
    exec hsmd "$@"
fi
config=${HSMD_CONFIG:-/etc/hsmd/hsmd.toml}
if [ -f "$config" ]; then
    exec hsmd serve --config "$config"
fi
state=${HSMD_STATE:-/var/lib/hsmd}
if [ ! -f "$state/hsmd.toml" ]; then
    hsmd init --dir "$state" --listen "${HSMD_LISTEN:-0.0.0.0:7443}"
    sed -i "s/^listen = \"127.0.0.1:0\"\$/listen = \"${HSMD_METRICS_LISTEN:-0.0.0.0:9464}\"/" \
        "$state/hsmd.toml"
    if [ "${HSMD_TENANCY:-multi}" = single ]; then
        printf '\n[tenancy]\nmode = "single"\ntenant = "%s"\n' "${HSMD_TENANT:-demo}" \
            >> "$state/hsmd.toml"
    fi
fi
exec hsmd serve --config "$state/hsmd.toml"
