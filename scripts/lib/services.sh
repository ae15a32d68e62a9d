# Local Redis and PostgreSQL for scripts/run and scripts/test, with data under .data/ (git-ignored).
# Source it, then call start_redis / start_postgres; stop_services stops what was started here.
# Ports: REDIS_PORT (default 6390) and POSTGRES_PORT (default 5440), chosen away from the
# standard ones so a system-wide server is not disturbed.

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
data_dir=${PLAYBACK_DATA_DIR:-$repo_root/.data}
REDIS_PORT=${REDIS_PORT:-6390}
POSTGRES_PORT=${POSTGRES_PORT:-5440}
# A Redis Cluster of 3 masters and 3 replicas on REDIS_CLUSTER_PORT .. +5 (start_redis_cluster).
REDIS_CLUSTER_PORT=${REDIS_CLUSTER_PORT:-7100}
REDIS_CLUSTER_NODE_TIMEOUT_MS=${REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}
started_services=()

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then echo "services: $what did not come up" >&2; return 1; fi
        sleep 0.2
    done
}

start_redis() {
    export PLAYBACK_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
    if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
        echo "services: redis already running on port $REDIS_PORT"
        return
    fi
    mkdir -p "$data_dir/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$data_dir/redis" --daemonize yes \
        --pidfile "$data_dir/redis/redis.pid" --logfile "$data_dir/redis/redis.log" \
        --save "" --appendonly no >/dev/null
    wait_for 10 redis redis-cli -p "$REDIS_PORT" ping
    started_services+=(redis)
    echo "services: redis on port $REDIS_PORT"
}

cluster_ports() { seq "$REDIS_CLUSTER_PORT" $((REDIS_CLUSTER_PORT + 5)); }

cluster_ok() { # every node answers and says the cluster is ok, with 3 replicas in place
    local port
    for port in $(cluster_ports); do
        # Read whole, then matched: `| grep -q` ends early and, under pipefail, fails the pipe on SIGPIPE.
        [[ "$(redis-cli -p "$port" cluster info 2>/dev/null)" == *"cluster_state:ok"* ]] || return 1
    done
    [ "$(redis-cli -p "$REDIS_CLUSTER_PORT" cluster nodes 2>/dev/null | grep -c slave)" -eq 3 ]
}

start_cluster_node() { # start_cluster_node PORT
    local dir="$data_dir/redis-cluster/$1"
    mkdir -p "$dir"
    redis-server --port "$1" --bind 127.0.0.1 --dir "$dir" --daemonize yes \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save "" --appendonly no \
        --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
        --cluster-node-timeout "$REDIS_CLUSTER_NODE_TIMEOUT_MS" >/dev/null
    wait_for 10 "redis cluster node $1" redis-cli -p "$1" ping
}

# A local Redis Cluster (3 masters, 3 replicas) with data under .data/redis-cluster; exports
# PLAYBACK_REDIS_CLUSTER_URL. Nodes that are already running are kept; a cluster that does not
# come back to `cluster_state:ok` from its saved configuration is created anew (its data is lost).
start_redis_cluster() {
    local seeds port saved=false
    # The first three nodes (no `| head`: under pipefail, the SIGPIPE it leaves `seq` fails the pipe).
    seeds=$(seq "$REDIS_CLUSTER_PORT" $((REDIS_CLUSTER_PORT + 2)) | sed 's/^/127.0.0.1:/' | paste -sd, -)
    export PLAYBACK_REDIS_CLUSTER_URL="redis+cluster://$seeds"
    if cluster_ok; then
        echo "services: redis cluster already running on ports $REDIS_CLUSTER_PORT-$((REDIS_CLUSTER_PORT + 5))"
        return
    fi
    [ -f "$data_dir/redis-cluster/$REDIS_CLUSTER_PORT/nodes.conf" ] && saved=true
    for port in $(cluster_ports); do
        redis-cli -p "$port" ping >/dev/null 2>&1 || start_cluster_node "$port"
    done
    started_services+=(redis-cluster)
    if ! { $saved && wait_for 15 "redis cluster (saved configuration)" cluster_ok 2>/dev/null; }; then
        for port in $(cluster_ports); do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done
        sleep 0.5
        rm -rf "$data_dir/redis-cluster"
        for port in $(cluster_ports); do start_cluster_node "$port"; done
        redis-cli --cluster create $(cluster_ports | sed 's/^/127.0.0.1:/') --cluster-replicas 1 --cluster-yes >/dev/null
        wait_for 30 "redis cluster" cluster_ok
    fi
    echo "services: redis cluster on ports $REDIS_CLUSTER_PORT-$((REDIS_CLUSTER_PORT + 5)) ($PLAYBACK_REDIS_CLUSTER_URL)"
}

postgres_bin() { echo "$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | tail -1)"; }

as_postgres() { if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }

# PostgreSQL's data must be reachable by the postgres user; a checkout under a private folder
# (a mktemp directory, a home directory with mode 700) is not, so the data then goes to /var/tmp.
postgres_data_dir() {
    if [ "$(id -u)" -ne 0 ] || (cd / && runuser -u postgres -- test -x "$data_dir") 2>/dev/null; then
        echo "$data_dir/postgres"
    else
        echo "/var/tmp/playback-sync-postgres-$(printf %s "$repo_root" | md5sum | cut -c1-8)"
    fi
}

start_postgres() {
    local bin pgdata
    bin=$(postgres_bin)
    mkdir -p "$data_dir"
    # PostgreSQL refuses to run as root: its data belongs to the postgres user.
    if [ "$(id -u)" -eq 0 ]; then chmod 755 "$data_dir"; fi
    pgdata=$(postgres_data_dir)
    export PLAYBACK_POSTGRES_URL="postgres://playback@127.0.0.1:$POSTGRES_PORT/playback"
    if "$bin/pg_isready" -q -h 127.0.0.1 -p "$POSTGRES_PORT"; then
        echo "services: postgres already running on port $POSTGRES_PORT"
        return
    fi
    if [ ! -f "$pgdata/PG_VERSION" ]; then
        mkdir -p "$pgdata"
        [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$pgdata"
        chmod 700 "$pgdata"
        as_postgres "$bin/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    as_postgres "$bin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w -t 30 \
        -o "-p $POSTGRES_PORT -k $pgdata -c listen_addresses=127.0.0.1" start >/dev/null
    started_services+=(postgres)
    local psql=("$bin/psql" -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -qtA)
    [ "$("${psql[@]}" -c "select 1 from pg_roles where rolname='playback'")" = 1 ] ||
        "${psql[@]}" -c "create role playback login" >/dev/null
    [ "$("${psql[@]}" -c "select 1 from pg_database where datname='playback'")" = 1 ] ||
        "${psql[@]}" -c "create database playback owner playback" >/dev/null
    echo "services: postgres on port $POSTGRES_PORT"
}

stop_services() {
    local service
    for service in "${started_services[@]}"; do
        case $service in
        redis) redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true ;;
        redis-cluster) for port in $(cluster_ports); do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done ;;
        postgres) as_postgres "$(postgres_bin)/pg_ctl" -D "$(postgres_data_dir)" -m fast -w stop >/dev/null 2>&1 || true ;;
        esac
    done
    started_services=()
}
