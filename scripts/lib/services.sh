# Local Redis and PostgreSQL for scripts/run and scripts/test, with data under .data/ (git-ignored).
# Source it, then call start_redis / start_postgres; stop_services stops what was started here.
# Ports: REDIS_PORT (default 6390) and POSTGRES_PORT (default 5440), chosen away from the
# standard ones so a system-wide server is not disturbed.

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
data_dir=${PLAYBACK_DATA_DIR:-$repo_root/.data}
REDIS_PORT=${REDIS_PORT:-6390}
POSTGRES_PORT=${POSTGRES_PORT:-5440}
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
    "${psql[@]}" -c "select 1 from pg_roles where rolname='playback'" | grep -q 1 ||
        "${psql[@]}" -c "create role playback login" >/dev/null
    "${psql[@]}" -c "select 1 from pg_database where datname='playback'" | grep -q 1 ||
        "${psql[@]}" -c "create database playback owner playback" >/dev/null
    echo "services: postgres on port $POSTGRES_PORT"
}

stop_services() {
    local service
    for service in "${started_services[@]}"; do
        case $service in
        redis) redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true ;;
        postgres) as_postgres "$(postgres_bin)/pg_ctl" -D "$(postgres_data_dir)" -m fast -w stop >/dev/null 2>&1 || true ;;
        esac
    done
    started_services=()
}
