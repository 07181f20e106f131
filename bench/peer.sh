#!/bin/bash
# The peer harness (../shared/peer/node-red: Node-RED flow, bare paho counter, edge-agent on the same MQTT workload),
# set up and run from one script so that a measurement can be repeated exactly.
#
#   bench/peer.sh setup [REF]            # PEER_ROOT (default /work/peer): harness, venvs, Node-RED, agent at REF
#   bench/peer.sh run SUBJECT... [--tag T] # a session per subject (agent | pycount | pyz | nr), ladder below
#   bench/peer.sh startup SUBJECT... [--tag T]  # start -> SUBSCRIBE, 3 starts each
#
# Run from the repository root. `setup` clones THIS repository at REF (default HEAD) into $PEER_ROOT/agent-src and
# installs it into $PEER_ROOT/agent-venv (the commit measured). `run` waits (wait_quiet.sh, <= 10 min) for the
# 1-minute load to fall under 0.6, records /proc/loadavg before and after each session beside its result
# ($PEER_ROOT/bench/results/<tag>/), and prints one line per rate. Sessions are sequential: never two at once.
# NO_WAIT=1: start each session at once (the load average is still recorded). RATES: the ladder.
set -eu
REPO=$(git rev-parse --show-toplevel)
export PEER_ROOT=${PEER_ROOT:-/work/peer}
export PEER_CSV=${PEER_CSV:-$REPO/../shared/data/skab/valve1/0.csv}
SHARED=${PEER_SHARED:-$REPO/../shared/peer/node-red}
RATES=${RATES:-100,1000,2000,4000,8000,12000,16000,20000}
cmd=${1:?usage: bench/peer.sh setup [REF] | run SUBJECT... [--tag T]}; shift

case $cmd in
setup)
  ref=${1:-HEAD}
  mkdir -p $PEER_ROOT/bench && cp $SHARED/* $PEER_ROOT/bench/
  [ -x $PEER_ROOT/venv/bin/python ] || { python3 -m venv $PEER_ROOT/venv && $PEER_ROOT/venv/bin/pip install -q 'paho-mqtt==2.*' numpy; }
  if [ ! -f $PEER_ROOT/nr/node_modules/node-red/package.json ]; then
    mkdir -p $PEER_ROOT/nr/data && cp $PEER_ROOT/bench/flows.json $PEER_ROOT/bench/settings.js $PEER_ROOT/nr/data/
    (cd $PEER_ROOT/nr && npm install node-red@4)
  fi
  rm -rf $PEER_ROOT/agent-src $PEER_ROOT/agent-venv
  git clone -q $REPO $PEER_ROOT/agent-src && git -C $PEER_ROOT/agent-src checkout -q $(git -C $REPO rev-parse $ref)
  python3 -m venv $PEER_ROOT/agent-venv && $PEER_ROOT/agent-venv/bin/pip install -q $PEER_ROOT/agent-src
  echo "agent-src at $(git -C $PEER_ROOT/agent-src log --oneline -1)"
  ;;
run|startup)
  tag=$(date -u +%Y%m%dT%H%M%S); subjects=()
  while [ $# -gt 0 ]; do
    case $1 in --tag) tag=$2; shift 2 ;; *) subjects+=("$1"); shift ;; esac
  done
  cd $PEER_ROOT/bench
  R=results/$tag; mkdir -p $R
  echo "agent-src: $(git -C $PEER_ROOT/agent-src log --oneline -1)" > $R/agent-commit.txt
  for s in "${subjects[@]}"; do
    if [ $cmd = startup ]; then
      la=$(./wait_quiet.sh startup-$s $R/load.log)
      echo "== startup $s  $(date -u +%FT%TZ)  loadavg before: $la"
      $PEER_ROOT/venv/bin/python bench.py startup --subject $s --n 3 --out $R/startup-$s.json
      continue
    fi
    if [ "${NO_WAIT:-0}" = 1 ]; then la=$(cat /proc/loadavg); echo "session-$s no wait: [$la]" >> $R/load.log
    else la=$(./wait_quiet.sh session-$s $R/load.log); fi
    echo "== $s  $(date -u +%FT%TZ)  loadavg before: $la"
    $PEER_ROOT/venv/bin/python bench.py session --subject $s --rep 1 --rates $RATES --loadavg-start "$la" \
      --out $R/session-$s.json
    echo "   loadavg after: $(cat /proc/loadavg)"
  done
  ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
