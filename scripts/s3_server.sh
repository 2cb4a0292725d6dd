#!/usr/bin/env bash
# Starts or stops a private S3-compatible server (s3s-fs) on a free loopback port for
# the test suite. It keeps data on disk and checks SigV4 credentials.
#
#   eval "$(scripts/s3_server.sh start DIR)"        # s3s-fs; prints AWS_* and COFFER_TEST_* exports
#   eval "$(scripts/s3_server.sh start-moto DIR)"   # moto (in memory), for the conformance test
#   scripts/s3_server.sh stop DIR
set -euo pipefail
action="${1:?start or stop}"
dir="${2:?state directory}"
S3S_VERSION=0.14.1

install_s3s() {
    if ! command -v s3s-fs >/dev/null && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
        echo "installing s3s-fs $S3S_VERSION (once)" >&2
        # A debug build: a test server needs no optimising, which took most of its
        # build time (9 of 10 minutes on two cores).
        cargo install --locked --debug "s3s-fs@$S3S_VERSION" --features binary >&2
    fi
    command -v s3s-fs 2>/dev/null || echo "$HOME/.cargo/bin/s3s-fs"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_port() {
    for _ in $(seq 1 100); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "no server came up on port $1" >&2
    return 1
}

case "$action" in
start)
    binary="$(install_s3s)"
    mkdir -p "$dir/data/coffer-test"
    port="$(free_port)"
    "$binary" --host 127.0.0.1 --port "$port" --access-key coffer-test-key --secret-key coffer-test-secret "$dir/data" \
        >"$dir/server.log" 2>&1 &
    echo $! >"$dir/pid"
    wait_for_port "$port"
    cat <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=coffer-test-key
export AWS_SECRET_ACCESS_KEY=coffer-test-secret
export AWS_REGION=us-east-1
export COFFER_TEST_S3_BUCKET=coffer-test
export COFFER_TEST_S3S_BIN=$binary
export COFFER_TEST_S3_DATA=$dir/data
ENV
    ;;
start-moto)
    if ! command -v moto_server >/dev/null; then
        echo "installing moto[server] (once)" >&2
        python3 -m pip install --quiet 'moto[server]' >&2
    fi
    mkdir -p "$dir"
    port="$(free_port)"
    moto_server -H 127.0.0.1 -p "$port" >"$dir/server.log" 2>&1 &
    echo $! >"$dir/pid"
    wait_for_port "$port"
    AWS_ACCESS_KEY_ID=moto AWS_SECRET_ACCESS_KEY=moto python3 -c "
import boto3
boto3.client('s3', endpoint_url='http://127.0.0.1:$port', region_name='us-east-1').create_bucket(Bucket='coffer-moto')" >&2
    echo "export COFFER_TEST_MOTO_ENDPOINT=http://127.0.0.1:$port"
    ;;
stop)
    if [ -f "$dir/pid" ]; then
        kill "$(cat "$dir/pid")" 2>/dev/null || true
        rm -f "$dir/pid"
    fi
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
