#!/usr/bin/env bash
# Performance benchmark of dga-operator against the TEST STAND-IN (not Elasticsearch/Kibana).
# Prints figures (never asserts wall-clock limits) and writes target/bench-report.md.
#
#   tests/bench/run.sh            all parts
#   BENCH_PARTS="a e" tests/bench/run.sh     only some parts (a b c d e; b/c/d share one run)
#
# Parts:
#   a  install of a release with a ~250 MB definition shipped as `compressed_definition` and of
#      one with a ~90 MB plain `definition` (`dga-operator setup`, one shot, fresh cache): peak RSS
#      (/usr/bin/time -v) and wall time vs. a same-run baseline of curl downloading the same zip
#      from the stand-in's release API + curl PUT-uploading the same model body to the stand-in ES;
#      each case BENCH_INSTALL_RUNS times (baseline and operator take turns going first):
#      median ratio, its range, and the ratio of the best times.
#   b  steady state: N (200) Ready DgaModels on N stand-in clusters (one `dga-bench multi`
#      process), one full resync: writes and reads per DgaModel from the stand-ins' request logs,
#      idle CPU (/proc/<pid>/stat) and RSS (VmHWM) of `dga-operator run --resync-period 20s`.
#   c  scale: the same N DgaModels from a cold start (time to all Ready, requests per DgaModel,
#      peak RSS), then again in a second namespace with one cluster slowed by a stand-in `Delay`
#      fault on every request (fairness: time for the other N-1).
#   d  reaction: tag bump of one DgaModel to a new small release -> Ready, median of R (20) runs.
#   e  the stand-in's own throughput: GET / (keep-alive, one curl) and the 90 MB model PUT.
#   f  the Fleet route: N DgaModels with `fleetPackage` (dga 2.3.7 from each Kibana's registry,
#      Elastic's prebuilt rules, the module's job) from a cold start (time to all Ready, requests
#      per DgaModel), then one quiet resync window (writes, reads per DgaModel per resync).
#
# Needs: cargo, curl, jq, kubectl, /usr/bin/time; Kubernetes from tests/testbed/k8s.sh (cached
# kube-apiserver) for b/c/d. Knobs: BENCH_BIG_BYTES (250000000), BENCH_PLAIN_BYTES (90000000),
# BENCH_N (200), BENCH_REACTION_RUNS (20), BENCH_CONCURRENCY (16), BENCH_PER_CLUSTER (1),
# BENCH_SLOW_MS (3000), BENCH_GET_N (3000), BENCH_INSTALL_RUNS (9: part a's runs per case).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
REPORT=${BENCH_REPORT:-$ROOT/target/bench-report.md}
BIN=$ROOT/target/release
PARTS=${BENCH_PARTS:-"a b c d e f"}
BIG=${BENCH_BIG_BYTES:-250000000}
PLAIN=${BENCH_PLAIN_BYTES:-90000000}
N=${BENCH_N:-200}
RUNS=${BENCH_REACTION_RUNS:-20}
CONC=${BENCH_CONCURRENCY:-16}
PER=${BENCH_PER_CLUSTER:-1}
SLOW_MS=${BENCH_SLOW_MS:-3000}
GET_N=${BENCH_GET_N:-3000}
INSTALL_RUNS=${BENCH_INSTALL_RUNS:-9}
has() { [[ " $PARTS " == *" $1 "* ]]; }
log() { printf '[bench] %s\n' "$*" >&2; }
out() { printf '%s\n' "$*" | tee -a "$REPORT"; }
now() { date +%s.%N; }
calc() { awk "BEGIN{printf \"%.${2:-2}f\", $1}"; }
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; rm -rf "${WORK:-/nonexistent}"; }

# Wait for KEY= in a process's stdout file and print the value.
waitkey() { local f=$1 k=$2 i; for i in $(seq 1 600); do
  if grep -q "^$k=" "$f" 2>/dev/null; then grep "^$k=" "$f" | head -1 | cut -d= -f2-; return; fi; sleep 0.2; done
  echo "timeout waiting for $k in $f" >&2; cat "$f" >&2; return 1; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hwm_kib() { awk '/VmHWM/{print $2}' "/proc/$1/status"; }
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }

# ---------------------------------------------------------------- k8s part (b, c, d) -----------
if [ "${1:-}" = "--k8s-part" ]; then
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/dga-bench-k8s.XXXXXX"); trap cleanup EXIT
  TAG=ML-DGA-20240101-1
  kubectl apply -f <("$BIN/dga-operator" crd) >/dev/null
  kubectl wait --for=condition=Established crd/dgamodels.dgaoperator.io --timeout=60s >/dev/null

  start_multi() { # $1 = file, rest = extra args
    local f=$1; shift
    "$BIN/dga-bench" multi --count "$N" --tag "$TAG" --extra-tags "$RUNS" "$@" >"$f" 2>"$f.err" & PIDS+=($!)
    waitkey "$f" ADMIN_URL >/dev/null
  }
  make_objects() { # $1 = namespace, $2 = multi stdout file, $3 = spec source (default the tag)
    local ns=$1 f=$2 src=${3:-"releaseTag: $TAG"}
    kubectl create namespace "$ns" >/dev/null
    while read -r _ i es kb; do
      cat <<Y
---
apiVersion: v1
kind: Secret
metadata: {name: es-$i, namespace: $ns}
stringData: {url: "$es", username: elastic, password: changeme, kibana-url: "$kb"}
---
apiVersion: dgaoperator.io/v1alpha1
kind: DgaModel
metadata: {name: dga-$i, namespace: $ns}
spec: {$src, clusterRef: {secretName: es-$i}}
Y
    done < <(grep '^CLUSTER ' "$f") > "$WORK/$ns.yaml"
    kubectl create -f "$WORK/$ns.yaml" >/dev/null
  }
  ready_count() { kubectl get dgamodels -n "$1" -o json | jq '[.items[] | select(any(.status.conditions[]?; .type=="Ready" and .status=="True"))] | length'; }
  ready_names() { kubectl get dgamodels -n "$1" -o json | jq -r '.items[] | select(any(.status.conditions[]?; .type=="Ready" and .status=="True")) | .metadata.name'; }
  start_operator() { # $1 namespace, $2 log
    local port; port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    "$BIN/dga-operator" run --namespace "$1" --resync-period 20s --github-api "$GH" \
      --cache-dir "$WORK/cache-$1" --metrics-addr "127.0.0.1:$port" \
      --concurrency "$CONC" --per-cluster-concurrency "$PER" 2>"$2" & OP=$!; PIDS+=($OP)
  }
  summary() { curl -sf "$ADMIN/summary"; }

  # --- f: the Fleet route ----------------------------------------------------------------------
  if has f; then
    FN=${BENCH_FLEET_N:-$N}
    N_SAVED=$N; N=$FN
    start_multi "$WORK/multif" --fleet 2.3.7; ADMIN=$(waitkey "$WORK/multif" ADMIN_URL); GH=$(waitkey "$WORK/multif" GITHUB_URL)
    MULTIF=${PIDS[-1]}
    make_objects bench-fleet "$WORK/multif" "fleetPackage: {version: 2.3.7}"
    log "Fleet route: cold start of $N DgaModels"
    t0=$(now); start_operator bench-fleet "$WORK/opf.log"
    while :; do c=$(ready_count bench-fleet); [ "$c" -ge "$N" ] && break
      if [ "$(calc "$(now) - $t0" 0)" -gt 900 ]; then log "only $c/$N Ready after 900 s"; break; fi; sleep 1; done
    t_fleet=$(calc "$(now) - $t0" 1); s=$(summary)
    out ""
    out "## f. The Fleet route: $N DgaModels with fleetPackage 2.3.7 (one stack each), cold start then steady state"
    out ""
    out "| figure | value | target |"
    out "|---|---|---|"
    out "| Ready | $c / $N | all |"
    out "| time to all Ready | ${t_fleet} s | |"
    out "| ES requests per DgaModel (reads + writes) | $(jq -r "((.totals.es_reads//0)+(.totals.es_writes//0))/$N" <<<"$s" | xargs printf %.1f) ($(jq -r ".totals.es_reads//0" <<<"$s") reads, $(jq -r ".totals.es_writes//0" <<<"$s") writes) | |"
    out "| Kibana requests per DgaModel | $(jq -r "((.totals.kibana_reads//0)+(.totals.kibana_writes//0))/$N" <<<"$s" | xargs printf %.1f) ($(jq -r ".totals.kibana_reads//0" <<<"$s") reads, $(jq -r ".totals.kibana_writes//0" <<<"$s") writes) | |"
    out "| off-spec requests | $(jq -r ".totals.off_spec//0" <<<"$s") | 0 |"
    out "| operator peak RSS (VmHWM) | $(calc "$(hwm_kib "$OP")/1024" 1) MiB | < 100 MiB |"
    sleep 25
    curl -sf -X DELETE "$ADMIN/requests" >/dev/null
    ticks0=$(cpu_ticks "$OP"); ts0=$(now)
    sleep 45
    ticks1=$(cpu_ticks "$OP"); ts1=$(now); s=$(summary)
    hz=$(getconf CLK_TCK); dt=$(calc "$ts1 - $ts0" 1); passes=$(calc "$dt / 20" 2)
    out "| steady state (${dt} s, ~${passes} resyncs): writes ES / Kibana | $(jq -r ".totals.es_writes//0" <<<"$s") / $(jq -r ".totals.kibana_writes//0" <<<"$s") | 0 / 0 |"
    out "| ES reads per DgaModel per resync | $(calc "$(jq -r ".totals.es_reads//0" <<<"$s") / $N / $passes" 1) | |"
    out "| Kibana reads per DgaModel per resync | $(calc "$(jq -r ".totals.kibana_reads//0" <<<"$s") / $N / $passes" 1) | |"
    out "| operator CPU while idle-resyncing | $(calc "100 * ($ticks1 - $ticks0) / $hz / $dt" 2) % of one core | |"
    out ""; out "Fleet-route steady-state requests by API (all clusters, whole window):"; out '```'
    out "$(jq -r '.by_api | to_entries | sort_by(-.value) | .[] | "    \(.value)\t\(.key)"' <<<"$s")"; out '```'
    kill "$OP" 2>/dev/null || true; wait "$OP" 2>/dev/null || true
    kill "$MULTIF" 2>/dev/null || true
    N=$N_SAVED
    if ! (has b || has c || has d); then exit 0; fi
  fi

  # --- c: cold start ---------------------------------------------------------------------------
  start_multi "$WORK/multi1"; ADMIN=$(waitkey "$WORK/multi1" ADMIN_URL); GH=$(waitkey "$WORK/multi1" GITHUB_URL)
  MULTI1=${PIDS[-1]}
  make_objects bench "$WORK/multi1"
  log "cold start of $N DgaModels"
  t0=$(now); start_operator bench "$WORK/op1.log"
  while :; do c=$(ready_count bench); [ "$c" -ge "$N" ] && break
    if [ "$(calc "$(now) - $t0" 0)" -gt 900 ]; then log "only $c/$N Ready after 900 s"; break; fi; sleep 1; done
  t_cold=$(calc "$(now) - $t0" 1); s=$(summary)
  hwm=$(hwm_kib "$OP")
  out ""
  out "## c. Scale: $N DgaModels, cold start (--concurrency $CONC --per-cluster-concurrency $PER)"
  out ""
  out "| figure | value | target |"
  out "|---|---|---|"
  out "| Ready | $c / $N | all |"
  out "| time to all Ready | ${t_cold} s | |"
  out "| ES requests per DgaModel (reads + writes) | $(jq -r "((.totals.es_reads//0)+(.totals.es_writes//0))/$N" <<<"$s" | xargs printf %.1f) ($(jq -r ".totals.es_reads//0" <<<"$s") reads, $(jq -r ".totals.es_writes//0" <<<"$s") writes) | |"
  out "| Kibana requests per DgaModel | $(jq -r "((.totals.kibana_reads//0)+(.totals.kibana_writes//0))/$N" <<<"$s" | xargs printf %.1f) | |"
  out "| GitHub requests (total) | $(jq -r "(.totals.github_reads//0)+(.totals.github_writes//0)" <<<"$s") | |"
  out "| off-spec requests | $(jq -r ".totals.off_spec//0" <<<"$s") | 0 |"
  out "| operator peak RSS (VmHWM) | $(calc "$hwm/1024" 1) MiB | < 100 MiB |"
  jq -r '.by_api | to_entries | sort_by(-.value) | .[] | "    \(.value)\t\(.key)"' <<<"$s" > "$WORK/cold-by-api.txt"
  out ""; out "Cold-start requests by API (all clusters):"; out '```'; out "$(cat "$WORK/cold-by-api.txt")"; out '```'

  # --- b: steady state --------------------------------------------------------------------------
  log "steady state: waiting one quiet period, then measuring a full resync (20 s period)"
  sleep 25
  curl -sf -X DELETE "$ADMIN/requests" >/dev/null
  ticks0=$(cpu_ticks "$OP"); ts0=$(now)
  sleep 45   # >= 2 resync periods so every DgaModel resyncs at least once (we report per pass)
  ticks1=$(cpu_ticks "$OP"); ts1=$(now); s=$(summary)
  hz=$(getconf CLK_TCK); dt=$(calc "$ts1 - $ts0" 1)
  passes=$(calc "$dt / 20" 2)
  out ""
  out "## b. Steady state: $N Ready DgaModels, resync period 20 s, ${dt} s window (~${passes} resync passes)"
  out ""
  out "| figure | value | target |"
  out "|---|---|---|"
  out "| writes ES / Kibana | $(jq -r ".totals.es_writes//0" <<<"$s") / $(jq -r ".totals.kibana_writes//0" <<<"$s") | 0 / 0 |"
  out "| ES reads per DgaModel per resync | $(calc "$(jq -r ".totals.es_reads//0" <<<"$s") / $N / $passes" 1) | <= 3 |"
  out "| Kibana reads per DgaModel per resync | $(calc "$(jq -r ".totals.kibana_reads//0" <<<"$s") / $N / $passes" 1) | <= 1 |"
  out "| GitHub requests | $(jq -r "(.totals.github_reads//0)" <<<"$s") | 0 (cached) |"
  out "| off-spec requests | $(jq -r ".totals.off_spec//0" <<<"$s") | 0 |"
  out "| operator CPU while idle-resyncing | $(calc "100 * ($ticks1 - $ticks0) / $hz / $dt" 2) % of one core | |"
  out "| operator RSS now / peak | $(calc "$(rss_kib "$OP")/1024" 1) / $(calc "$(hwm_kib "$OP")/1024" 1) MiB | < 100 MiB |"
  out ""; out "Steady-state requests by API (all clusters, whole window):"; out '```'
  out "$(jq -r '.by_api | to_entries | sort_by(-.value) | .[] | "    \(.value)\t\(.key)"' <<<"$s")"; out '```'
  # apiserver writes during the window: resourceVersions of the DgaModels must not move.
  rv0=$(kubectl get dgamodels -n bench -o json | jq -c '[.items[].metadata.resourceVersion]')
  sleep 25
  rv1=$(kubectl get dgamodels -n bench -o json | jq -c '[.items[].metadata.resourceVersion]')
  out "| apiserver: DgaModels whose resourceVersion moved over one more resync | $(jq -n --argjson a "$rv0" --argjson b "$rv1" '[range(0; $a|length) | select($a[.] != $b[.])] | length') | 0 |"

  # --- d: reaction ------------------------------------------------------------------------------
  log "reaction: $RUNS tag bumps"
  times=()
  for r in $(seq 1 "$RUNS"); do
    nt=ML-DGA-20240102-$r
    t0=$(now)
    kubectl patch dgamodel dga-0 -n bench --type merge -p "{\"spec\":{\"releaseTag\":\"$nt\"}}" >/dev/null
    gen=$(kubectl get dgamodel dga-0 -n bench -o jsonpath='{.metadata.generation}')
    while :; do
      st=$(kubectl get dgamodel dga-0 -n bench -o json)
      if jq -e --arg t "$nt" --argjson g "$gen" '.status.installedTag==$t and .status.observedGeneration==$g and any(.status.conditions[]?; .type=="Ready" and .status=="True")' <<<"$st" >/dev/null; then break; fi
      if [ "$(calc "$(now) - $t0" 0)" -gt 120 ]; then log "run $r: not Ready after 120 s"; break; fi
      sleep 0.05
    done
    times+=("$(calc "$(now) - $t0" 3)")
  done
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  med=$(awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else printf "%.3f", (a[NR/2]+a[NR/2+1])/2 }' <<<"$sorted")
  out ""
  out "## d. Reaction: tag bump (small bundle) -> Ready, $RUNS runs"
  out ""
  out "| figure | value |"
  out "|---|---|"
  out "| median | ${med} s |"
  out "| min / max | $(head -1 <<<"$sorted") / $(tail -1 <<<"$sorted") s |"
  out "| (includes kubectl polling every 50 ms + kubectl process start ~0.1 s) | |"
  kill "$OP" 2>/dev/null || true; wait "$OP" 2>/dev/null || true
  kill "$MULTI1" 2>/dev/null || true

  # --- c (fairness): one slow cluster -----------------------------------------------------------
  SLOW=$((N - 1))
  start_multi "$WORK/multi2" --slow "$SLOW" --slow-ms "$SLOW_MS"
  ADMIN=$(waitkey "$WORK/multi2" ADMIN_URL); GH=$(waitkey "$WORK/multi2" GITHUB_URL)
  make_objects bench-slow "$WORK/multi2"
  log "cold start with cluster $SLOW delayed by $SLOW_MS ms per request"
  t0=$(now); start_operator bench-slow "$WORK/op2.log"; t_others=""; t_slow=""
  while :; do
    names=$(ready_names bench-slow); c=$(grep -c . <<<"$names" || true)
    others=$(grep -vc "^dga-$SLOW\$" <<<"$names" || true)
    el=$(calc "$(now) - $t0" 1)
    [ -z "$t_others" ] && [ "$others" -ge $((N - 1)) ] && t_others=$el
    [ -z "$t_slow" ] && grep -qx "dga-$SLOW" <<<"$names" && t_slow=$el
    [ -n "$t_others" ] && [ -n "$t_slow" ] && break
    if [ "$(calc "$el" 0)" -gt 900 ]; then log "timeout: $c/$N Ready"; break; fi
    sleep 1
  done
  out ""
  out "## c. Fairness: cluster $SLOW answers every request ${SLOW_MS} ms late"
  out ""
  out "| figure | value |"
  out "|---|---|"
  out "| other $((N - 1)) DgaModels all Ready after | ${t_others:-not reached} s (no slow cluster: ${t_cold} s) |"
  out "| the slow cluster's DgaModel Ready after | ${t_slow:-not reached} s |"
  out "| operator peak RSS | $(calc "$(hwm_kib "$OP")/1024" 1) MiB |"
  exit 0
fi

# ---------------------------------------------------------------- main ------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dga-bench.XXXXXX"); trap cleanup EXIT
log "building release binaries"
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --bins -q
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release -p dga-standin --bins -q
mkdir -p "$(dirname "$REPORT")"
: > "$REPORT"
out "# dga-operator benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
out ""
out "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM; load average at start: $(cut -d' ' -f1-3 /proc/loadavg). Other jobs may share the machine: compare ratios, not absolute times."
out "Stand-in: TEST STAND-IN (dga-standin), not Elasticsearch/Kibana."

install_case() { # $1 label, $2 encoding, $3 bytes
  local label=$1 enc=$2 bytes=$3 d="$WORK/rel-$2" tag
  tag=ML-DGA-2024010$([ "$enc" = plain ] && echo 3 || echo 4)-1
  log "$label: generating a release with a ~$bytes byte $enc definition"
  "$BIN/dga-bench" release --tag "$tag" --model-bytes "$bytes" --encoding "$enc" --out "$d" > "$d.out"
  local zip model_id entry_bytes def_bytes
  zip=$(waitkey "$d.out" ZIP); model_id=$(waitkey "$d.out" MODEL_ID)
  entry_bytes=$(waitkey "$d.out" MODEL_ENTRY_BYTES); def_bytes=$(waitkey "$d.out" DEFINITION_BYTES)
  local run ratios=() dls=() puts=() ops=() rsss=() off_total=0
  for run in $(seq 1 "$INSTALL_RUNS"); do
    # A fresh stand-in each run: every install below is a first install.
    "$BIN/dga-standin" --es-port 0 --kibana-port 0 --publish "$tag=$zip" > "$d.standin" 2>"$d.standin.err" & local sp=$!; PIDS+=($sp)
    local es gh admin
    es=$(waitkey "$d.standin" ES_URL); gh=$(waitkey "$d.standin" GITHUB_URL); admin=$(waitkey "$d.standin" ADMIN_URL)
    # One untimed upload first: a fresh process's first large request pays for growing its
    # heap, and neither side should be the one to pay it.
    curl -sf -u elastic:changeme -X PUT -H 'Content-Type: application/json' -T "$d/put-body.json" "$es/_ml/trained_models/$model_id" -o /dev/null
    curl -sf -u elastic:changeme -X DELETE "$es/_ml/trained_models/$model_id" -o /dev/null
    local t_dl t_put t_op
    baseline() {
      local t0 url
      # Baseline 1: curl resolves the tag and downloads the zip.
      t0=$(now)
      url=$(curl -sf -H 'Accept: application/vnd.github+json' "$gh/repos/elastic/detection-rules/releases/tags/$tag" | jq -r '.assets[] | select(.name|endswith(".zip")) | .browser_download_url')
      curl -sf -H 'Accept: application/octet-stream' -o "$WORK/curl.zip" "$url"
      t_dl=$(calc "$(now) - $t0" 3)
      # Baseline 2: curl streams the model file (as shipped) as the PUT body.
      t0=$(now)
      curl -sf -u elastic:changeme -X PUT -H 'Content-Type: application/json' -T "$d/put-body.json" "$es/_ml/trained_models/$model_id" -o /dev/null
      t_put=$(calc "$(now) - $t0" 3)
      curl -sf -u elastic:changeme -X DELETE "$es/_ml/trained_models/$model_id" -o /dev/null
      rm -f "$WORK/curl.zip"
    }
    operator() { # one shot, fresh cache
      local t0
      t0=$(now)
      /usr/bin/time -v "$BIN/dga-operator" setup -t "$tag" -u "$es" -p changeme --github-api "$gh" \
        --cache-dir "$WORK/cache-$enc" > "$d.setup.out" 2> "$d.setup.err" || { log "setup failed:"; cat "$d.setup.out" "$d.setup.err" >&2; }
      t_op=$(calc "$(now) - $t0" 3)
    }
    # Alternate which goes first, so neither always meets the other's leftovers.
    if [ $((run % 2)) -eq 1 ]; then baseline; operator; else operator; baseline; fi
    local rss; rss=$(awk -F: '/Maximum resident set size/{gsub(/ /,"",$2); print $2}' "$d.setup.err")
    local off; off=$(curl -sf "$admin/requests" | jq '[.[] | select(.off_spec != null)] | length')
    off_total=$((off_total + off))
    kill "$sp" 2>/dev/null || true; wait "$sp" 2>/dev/null || true
    rm -rf "$WORK/cache-$enc"
    dls+=("$t_dl"); puts+=("$t_put"); ops+=("$t_op"); rsss+=("$rss")
    ratios+=("$(calc "$t_op / ($t_dl + $t_put)" 3)")
    log "$label run $run: operator $t_op s vs curl $t_dl + $t_put s = ${ratios[-1]}x, peak RSS $(calc "$rss/1024" 1) MiB"
  done
  median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
  lowest() { printf '%s\n' "$@" | sort -g | head -1; }
  highest() { printf '%s\n' "$@" | sort -g | tail -1; }
  local best; best=$(calc "$(lowest "${ops[@]}") / ($(lowest "${dls[@]}") + $(lowest "${puts[@]}"))" 2)
  out "| $label | $(calc "$(stat -c %s "$zip")/1048576" 1) MiB zip, $(calc "$def_bytes/1000000" 0) MB definition, $(calc "$entry_bytes/1000000" 0) MB model file | $(median "${dls[@]}") s | $(median "${puts[@]}") s | $(median "${ops[@]}") s | $(calc "$(median "${ratios[@]}")" 2)x ($(calc "$(lowest "${ratios[@]}")" 2) to $(calc "$(highest "${ratios[@]}")" 2)); best times: ${best}x | $(calc "$(highest "${rsss[@]}")/1024" 1) MiB | $off_total |"
  [ "$enc" = plain ] && PUT90="$(median "${puts[@]}") $entry_bytes"
  rm -rf "$d"
}

if has a; then
  out ""
  out "## a. Install of a large release (dga-operator setup, fresh cache) vs. curl"
  out ""
  out "Each case is run $INSTALL_RUNS times, each on a fresh stand-in (warmed by one untimed upload) and a fresh cache, baseline and operator taking turns to go first. Reported: the medians of the times, the median of the runs' ratios (lowest to highest), the ratio of the best times (least disturbed by other jobs on the machine), and the highest peak RSS."
  out ""
  out "| release | size | curl download | curl PUT | operator setup | ratio (target <= 1.25x) | operator peak RSS (target <= 64 MiB) | off-spec |"
  out "|---|---|---|---|---|---|---|---|"
  [ "$BIG" -gt 0 ] && install_case "compressed_definition" compressed "$BIG"
  install_case "plain definition" plain "$PLAIN"
fi

if has e; then
  "$BIN/dga-standin" --es-port 0 --kibana-port 0 > "$WORK/e.standin" 2>/dev/null & sp=$!; PIDS+=($sp)
  es=$(waitkey "$WORK/e.standin" ES_URL)
  urls=(); for _ in $(seq 1 "$GET_N"); do urls+=("$es/"); done
  t0=$(now); curl -sf -u elastic:changeme "${urls[@]}" > /dev/null; t=$(calc "$(now) - $t0" 3)
  out ""
  out "## e. The stand-in's own throughput"
  out ""
  out "| figure | value |"
  out "|---|---|"
  out "| GET / (one keep-alive connection, $GET_N requests, curl) | $(calc "$GET_N / $t" 0) requests/s |"
  if [ -n "${PUT90:-}" ]; then
    read -r pt pb <<<"$PUT90"
    out "| PUT of the $(calc "$pb/1000000" 0) MB plain model (curl -T, from part a) | ${pt} s = $(calc "$pb/1048576/$pt" 0) MiB/s |"
  fi
  kill "$sp" 2>/dev/null || true
fi

if has b || has c || has d || has f; then
  log "starting the Kubernetes testbed for parts b/c/d/f"
  BENCH_REPORT="$REPORT" BENCH_PARTS="$PARTS" tests/testbed/k8s.sh run -- "$ROOT/tests/bench/run.sh" --k8s-part
fi
log "report written to $REPORT"
