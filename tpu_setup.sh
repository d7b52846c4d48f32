#!/usr/bin/env bash
# From a laptop to a Cloud TPU VM slice and back: create the slice, install fmjax on every host,
# prepare a tfds dataset into a GCS bucket, launch / resume / stop a multi-host run, follow its
# log, delete the slice. Every remote step is one gcloud command; with --dry-run (or DRY_RUN=1)
# they are printed, shell-quoted, one per line, instead of run. Walkthrough: docs/multihost.md.
#
# The worker-* commands are the half that runs on each TPU VM host (gcloud ssh calls them from
# the copy of this script installed there), so what a host does is plain, testable bash too.
#
# Written for bash 3.2 as well (macOS laptops): no associative arrays, and empty arrays are
# expanded as ${a[@]+"${a[@]}"} because `set -u` rejects "${a[@]}" there.

set -euo pipefail

PROG=${0##*/}

# Where things live on every TPU VM host, relative to the login user's home directory.
SOURCE_NAME=fmjax                  # the code, installed editable
STAGING_NAME=fmjax.new             # a fresh copy, swapped in by worker-install
ARCHIVE_NAME=fmjax-src.tar.gz      # what `install --from-local` copies to each host
RUN_DIR_NAME=fmjax-run             # train.log and train.pid of the current run
VENV_NAME=fmjax-venv
PREPARE_VENV_NAME=fmjax-prepare-venv  # TensorFlow lives here, apart from jax (tfds build needs it)

DEFAULT_PYTHON=3.12

usage() {
  cat <<EOF
Usage: $PROG [--dry-run] COMMAND [FLAGS] [-- TRAINER FLAGS]

Cloud TPU VM slices for fmjax, driven from your laptop with gcloud.

Commands:
  create   --name N --zone Z --accelerator-type T [--version RUNTIME] [--spot | --preemptible]
           [--queued] [--slices K]
           Create the slice (T e.g. v5litepod-16: 16 v5e chips on 4 hosts). The runtime defaults
           by family: v5litepod -> v2-alpha-tpuv5-lite, v5p -> v2-alpha-tpuv5, v6e ->
           v2-alpha-tpuv6e, v2/v3/v4 -> tpu-ubuntu2204-base. --queued asks for it through a
           queued resource (waits for capacity; use with --spot; check with 'status');
           --slices K > 1 (with --queued) makes K slices for a multi-slice run.
  install  --name N --zone Z [--from-local DIR | --repo URL [--ref BRANCH]] [--python $DEFAULT_PYTHON]
           Copy fmjax to every host (default: --from-local this checkout, git-tracked and
           untracked-but-not-ignored files) and pip install -e '.[tpu]' (+ gcsfs) into
           ~/$VENV_NAME, a virtual environment on a Python chosen with uv: the TPU images ship
           Ubuntu 22.04's Python 3.10, older than jax supports (>= 3.11).
  prepare  --name N --zone Z --dataset D --data-dir gs://BUCKET/tfds [--python $DEFAULT_PYTHON]
           On host 0: 'tfds build D --file_format=array_record' (in a separate venv with
           TensorFlow, which tfds' builders need) onto local disk, then copy it to the bucket.
  launch   --name N --zone Z --config FILE.py:VARIANT --workdir gs://BUCKET/RUN
           [--data-dir gs://BUCKET/tfds] [--env KEY=VALUE ...] [-- TRAINER FLAGS]
           Start 'python -m fmjax.main --config ... --workdir ... --distributed [TRAINER FLAGS]'
           on every host in the background (nohup), logging to ~/$RUN_DIR_NAME/train.log;
           FMJAX_DATA_DIR is set from --data-dir. TRAINER FLAGS e.g. --config.train.steps=1000.
  resume   (same flags as launch) Launch again: the trainer restores the newest checkpoint
           in the workdir. After a preemption, recreate the slice and install first.
  logs     --name N --zone Z [--worker W] [--lines N]   Follow a host's train.log (default 0).
  stop     --name N --zone Z [--timeout SECONDS]
           SIGTERM the trainer on every host: it saves a checkpoint and exits.
  status   --name N --zone Z [--queued]   The slice's state and whether each host is training.
  delete   --name N --zone Z [--queued]   Delete the slice (with --queued: its queued resource).

Flags every command takes:
  --project P     the GCP project (default: gcloud's configured one)
  --slices K      the number of slices made by 'create --queued --slices K' (nodes N-0 .. N-K-1)
  --dry-run       anywhere on the line, or DRY_RUN=1: print the commands instead of running them
  -h, --help      this text

Run on each TPU VM host by the commands above (not by hand, usually):
  worker-install --source DIR [--python V]     worker-prepare --dataset D --data-dir GS [--python V]
  worker-launch [--data-dir D] [--env K=V ...] -- FMJAX.MAIN FLAGS
  worker-stop [--timeout SECONDS]              worker-status

Example (a v5litepod-16 on spot capacity, GPT-2 124M):
  $PROG create  --name gpt2 --zone us-west4-a --accelerator-type v5litepod-16 --spot
  $PROG install --name gpt2 --zone us-west4-a
  $PROG prepare --name gpt2 --zone us-west4-a --dataset lm1b --data-dir gs://BUCKET/tfds
  $PROG launch  --name gpt2 --zone us-west4-a --config experiments/gpt.py:gpt2 \\
      --workdir gs://BUCKET/runs/gpt2 --data-dir gs://BUCKET/tfds \\
      -- --config.data.dataset=lm1b --config.data.eval_split=test
  $PROG logs    --name gpt2 --zone us-west4-a
  $PROG delete  --name gpt2 --zone us-west4-a
EOF
}

# --- small helpers ----------------------------------------------------------------------------

die_usage() {  # bad input: say what and where, point at --help, exit 2 before anything runs
  echo "$PROG: error: $*" >&2
  echo "Run '$PROG --help' for the commands and their flags." >&2
  exit 2
}

die() {
  echo "$PROG: error: $*" >&2
  exit 1
}

note() {
  echo "$PROG: $*" >&2
}

shell_quote() {  # one word, written so that a POSIX shell (and Python's shlex) reads it back as is
  local word=$1
  if [[ -n $word && $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$word"
  else
    local q="'\\''"
    printf "'%s'" "${word//\'/$q}"
  fi
}

quote_words() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(shell_quote "$word")"
  done
  printf '%s' "$out"
}

run() {  # a command that acts on the world: printed under --dry-run, else shown and run
  if [[ $DRY_RUN == 1 ]]; then
    printf '%s\n' "$(quote_words "$@")"
  else
    echo "+ $(quote_words "$@")" >&2
    "$@"
  fi
}

# --- flags --------------------------------------------------------------------------------------

# Parsed values (empty = not given). Booleans are 0/1.
NAME="" ZONE="" PROJECT="" ACCELERATOR_TYPE="" RUNTIME_VERSION="" SPOT=0 PREEMPTIBLE=0 QUEUED=0
SLICES=1 REPO="" REF="" FROM_LOCAL="" PYTHON_VERSION=$DEFAULT_PYTHON DATASET="" DATA_DIR=""
CONFIG="" WORKDIR="" WORKER=0 LINES=100 TIMEOUT=600 SOURCE=""
ENV_VARS=()
TRAINER_ARGS=()
GIVEN=" "  # the flags seen, to reject those that the command does not take

parse_flags() {  # parse_flags ALLOWED_FLAGS ARGS...  (ALLOWED: space-separated, without --)
  local allowed=" $1 " flag value
  shift
  while (($#)); do
    case $1 in
      --)
        shift
        if [[ $allowed != *" -- "* ]]; then
          die_usage "$COMMAND takes no trainer flags after '--' (got: $*)"
        fi
        TRAINER_ARGS=("$@")
        return
        ;;
      --*=*) flag=${1%%=*}; value=${1#*=}; shift; set -- "$flag" "$value" "$@" ;;
      --*) ;;
      *) die_usage "$COMMAND: unexpected argument '$1' (flags start with --)" ;;
    esac
    flag=${1#--}
    if [[ $allowed != *" $flag "* ]]; then
      die_usage "$COMMAND does not take --$flag (it takes: $(flag_list "$allowed"))"
    fi
    GIVEN+="$flag "
    case $flag in
      spot) SPOT=1; shift; continue ;;
      preemptible) PREEMPTIBLE=1; shift; continue ;;
      queued) QUEUED=1; shift; continue ;;
    esac
    if (($# < 2)) || [[ -z $2 || $2 == --* ]]; then
      die_usage "--$flag needs a value"
    fi
    value=$2
    shift 2
    case $flag in
      name) NAME=$value ;;
      zone) ZONE=$value ;;
      project) PROJECT=$value ;;
      accelerator-type) ACCELERATOR_TYPE=$value ;;
      version) RUNTIME_VERSION=$value ;;
      slices) SLICES=$value ;;
      repo) REPO=$value ;;
      ref) REF=$value ;;
      from-local) FROM_LOCAL=$value ;;
      python) PYTHON_VERSION=$value ;;
      dataset) DATASET=$value ;;
      data-dir) DATA_DIR=$value ;;
      config) CONFIG=$value ;;
      workdir) WORKDIR=$value ;;
      env) ENV_VARS+=("$value") ;;
      worker) WORKER=$value ;;
      lines) LINES=$value ;;
      timeout) TIMEOUT=$value ;;
      source) SOURCE=$value ;;
      *) die "internal: flag --$flag is allowed but not handled" ;;
    esac
  done
}

flag_list() {  # "name zone --" -> "--name --zone -- TRAINER FLAGS"
  local out="" flag
  for flag in $1; do
    if [[ $flag == -- ]]; then out+=" -- TRAINER FLAGS"; else out+=" --$flag"; fi
  done
  printf '%s' "${out# }"
}

given() {
  [[ $GIVEN == *" $1 "* ]]
}

require() {  # require FLAG...: each must have been given
  local flag
  for flag in "$@"; do
    given "$flag" || die_usage "$COMMAND needs --$flag"
  done
}

check() {  # check FLAG VALUE REGEX WHAT_IS_ALLOWED
  [[ $2 =~ $3 ]] || die_usage "--$1=$2 is not valid: $4"
}

check_slice_flags() {  # what every laptop-side command takes, checked before any gcloud call
  require name zone
  check name "$NAME" '^[a-z]([-a-z0-9]{0,50}[a-z0-9])?$' \
    "TPU names are lower-case letters, digits and hyphens, starting with a letter"
  check zone "$ZONE" '^[a-z]+-[a-z]+[0-9]+-[a-z]$' "a zone name such as us-west4-a or us-central2-b"
  check slices "$SLICES" '^[1-9][0-9]*$' "a whole number of slices, 1 or more"
  if [[ -n $PROJECT ]]; then
    check project "$PROJECT" '^[a-z][-a-z0-9]{4,28}[a-z0-9]$' "a GCP project id (6-30 lower-case letters, digits, hyphens)"
  fi
}

check_python() {
  check python "$PYTHON_VERSION" '^3\.(1[1-9]|[2-9][0-9])$' \
    "a Python version such as 3.12 (jax needs 3.11 or newer)"
}

check_gs_path() {  # check_gs_path FLAG VALUE WHY
  check "$1" "$2" '^gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?$' \
    "$3 (a bucket name is 3-222 lower-case letters, digits, '-', '_' or '.')"
}

# --- gcloud calls -------------------------------------------------------------------------------

node_names() {  # one TPU VM node per slice; queued multi-slice nodes are named PREFIX-INDEX
  local i
  if ((SLICES == 1)); then
    echo "$NAME"
  else
    for ((i = 0; i < SLICES; i++)); do echo "$NAME-$i"; done
  fi
}

gcloud_tpu() {  # gcloud_tpu ARGS... : a `gcloud compute tpus` command in this zone and project
  local extra=()
  if [[ -n $PROJECT ]]; then extra=("--project=$PROJECT"); fi
  run gcloud compute tpus "$@" "--zone=$ZONE" ${extra[@]+"${extra[@]}"}
}

ssh_hosts() {  # ssh_hosts WORKER REMOTE_COMMAND: run it on that worker (or 'all') of every slice
  local worker=$1 command=$2 node
  while read -r node; do
    gcloud_tpu tpu-vm ssh "$node" "--worker=$worker" "--command=$command"
  done < <(node_names)
}

ssh_first_host() {  # ssh_first_host WORKER REMOTE_COMMAND: on that worker of the first slice only
  gcloud_tpu tpu-vm ssh "$(node_names | head -n 1)" "--worker=$1" "--command=$2"
}

require_gcloud() {
  if [[ $DRY_RUN != 1 ]] && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), or add --dry-run to see the commands"
  fi
}

remote_script() {  # remote_script DIR ARGS...: a host runs this script's worker-* command from DIR
  local dir=$1
  shift
  # ssh starts the command in the login user's home directory: relative paths are under it.
  quote_words bash "$dir/tpu_setup.sh" "$@"
}

# --- laptop-side commands -------------------------------------------------------------------------

default_runtime() {  # the TPU software version for an accelerator type's family
  case $1 in
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
  esac
}

cmd_create() {
  parse_flags "name zone project accelerator-type version spot preemptible queued slices" "$@"
  check_slice_flags
  require accelerator-type
  check accelerator-type "$ACCELERATOR_TYPE" '^(v2|v3|v4|v5p|v5litepod|v6e)-[1-9][0-9]*$' \
    "one of v2-N, v3-N, v4-N, v5litepod-N (v5e), v5p-N, v6e-N, e.g. v5litepod-16"
  local version=${RUNTIME_VERSION:-$(default_runtime "$ACCELERATOR_TYPE")}
  check version "$version" '^[a-z0-9][-a-z0-9.]*$' "a TPU software version such as v2-alpha-tpuv5-lite"
  if ((SPOT && PREEMPTIBLE)); then
    die_usage "--spot and --preemptible exclude each other (spot is the newer of the two)"
  fi
  if ((SLICES > 1 && !QUEUED)); then
    die_usage "--slices $SLICES needs --queued: multi-slice TPUs are made through a queued resource"
  fi
  if ((QUEUED && PREEMPTIBLE)); then
    die_usage "--preemptible does not apply to --queued; use --spot"
  fi
  require_gcloud
  local capacity=()
  if ((SPOT)); then capacity=(--spot); fi
  if ((PREEMPTIBLE)); then capacity=(--preemptible); fi
  if ((QUEUED)); then
    local nodes=("--node-id=$NAME")
    if ((SLICES > 1)); then nodes=("--node-count=$SLICES" "--node-prefix=$NAME"); fi
    gcloud_tpu queued-resources create "$NAME" "--accelerator-type=$ACCELERATOR_TYPE" \
      "--runtime-version=$version" "${nodes[@]}" ${capacity[@]+"${capacity[@]}"}
    note "queued; '$PROG status --name $NAME --zone $ZONE --queued' shows when it is ACTIVE"
  else
    gcloud_tpu tpu-vm create "$NAME" "--accelerator-type=$ACCELERATOR_TYPE" "--version=$version" \
      ${capacity[@]+"${capacity[@]}"}
  fi
}

make_source_archive() {  # make_source_archive DIR ARCHIVE: the files git would commit, tar.gz'ed
  local dir=$1 archive=$2
  if git -C "$dir" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked files that still exist plus untracked ones that are not ignored: the working tree
    # as it is, without virtualenvs, caches and run directories.
    local list=$archive.files path
    : >"$list"
    while IFS= read -r -d '' path; do
      if [[ -e $dir/$path ]]; then printf '%s\0' "$path" >>"$list"; fi
    done < <(git -C "$dir" ls-files -z --cached --others --exclude-standard)
    run tar -czf "$archive" -C "$dir" --null -T "$list"
  else
    run tar -czf "$archive" -C "$dir" --exclude=.git --exclude=.venv --exclude=__pycache__ \
      --exclude='*.egg-info' .
  fi
}

cmd_install() {
  parse_flags "name zone project slices repo ref from-local python" "$@"
  check_slice_flags
  check_python
  if [[ -n $REPO && -n $FROM_LOCAL ]]; then
    die_usage "--repo and --from-local exclude each other: the code comes from one place"
  fi
  if [[ -n $REF && -z $REPO ]]; then
    die_usage "--ref picks a branch or tag of --repo; give --repo URL too"
  fi
  if [[ -n $REPO ]]; then
    check repo "$REPO" '^[^-[:space:]][^[:space:]]*$' "a git URL, e.g. https://github.com/OWNER/fmjax.git"
  fi
  if [[ -n $REF ]]; then
    check ref "$REF" '^[A-Za-z0-9][-A-Za-z0-9_./]*$' "a branch or tag name"
  fi
  local from_local=${FROM_LOCAL:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
  if [[ -z $REPO ]]; then
    [[ -f $from_local/pyproject.toml && -d $from_local/fmjax ]] ||
      die_usage "--from-local=$from_local is not an fmjax checkout (no pyproject.toml and fmjax/ there)"
  fi
  require_gcloud

  local install_cmd
  install_cmd=$(remote_script "$STAGING_NAME" worker-install --source "$STAGING_NAME" --python "$PYTHON_VERSION")
  if [[ -n $REPO ]]; then
    local clone=(git clone --depth 1)
    if [[ -n $REF ]]; then clone+=(--branch "$REF"); fi
    clone+=("$REPO")
    ssh_hosts all "rm -rf $STAGING_NAME && $(quote_words "${clone[@]}" "$STAGING_NAME") && $install_cmd"
  else
    local tmp archive node
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/fmjax-install.XXXXXX")
    # shellcheck disable=SC2064  # expand $tmp now: it is local to this function
    trap "rm -rf '$tmp'" EXIT
    archive=$tmp/$ARCHIVE_NAME
    export COPYFILE_DISABLE=1  # macOS tar: no ._* resource-fork files in the archive
    make_source_archive "$from_local" "$archive"
    if [[ $DRY_RUN != 1 ]]; then
      note "copying $(du -h "$archive" | cut -f1) of $from_local to every host"
    fi
    while read -r node; do
      gcloud_tpu tpu-vm scp "$archive" "$node:$ARCHIVE_NAME" --worker=all
    done < <(node_names)
    ssh_hosts all "rm -rf $STAGING_NAME && mkdir $STAGING_NAME && tar -xzf $ARCHIVE_NAME -C $STAGING_NAME && rm $ARCHIVE_NAME && $install_cmd"
  fi
}

cmd_prepare() {
  parse_flags "name zone project slices dataset data-dir python" "$@"
  check_slice_flags
  require dataset data-dir
  check dataset "$DATASET" '^[a-z0-9_]+(/[A-Za-z0-9_.-]+)?(:[0-9]+\.[0-9]+\.[0-9]+)?$' \
    "a tfds catalog name, e.g. lm1b, wiki40b/en or lm1b:1.1.0"
  check_gs_path data-dir "$DATA_DIR" "the prepared data goes to a GCS bucket that every host reads: gs://BUCKET/tfds"
  check_python
  require_gcloud
  ssh_first_host 0 "$(remote_script "$SOURCE_NAME" worker-prepare --dataset "$DATASET" \
    --data-dir "$DATA_DIR" --python "$PYTHON_VERSION")"
}

cmd_launch() {
  parse_flags "name zone project slices config workdir data-dir env --" "$@"
  check_slice_flags
  require config workdir
  check config "$CONFIG" '^[^:[:space:]]+\.py(:[^[:space:]]+)?$' \
    "an experiment config as PATH.py:VARIANT, relative to the repository, e.g. experiments/gpt.py:gpt2"
  check_gs_path workdir "$WORKDIR" \
    "a multi-host run writes one workdir that all hosts share and that outlives the TPU VMs: gs://BUCKET/PATH"
  if [[ -n $DATA_DIR ]]; then
    check data-dir "$DATA_DIR" '^(gs://|/)' "gs://BUCKET/PATH, or an absolute path present on every host"
  fi
  local kv
  for kv in ${ENV_VARS[@]+"${ENV_VARS[@]}"}; do
    check env "$kv" '^[A-Za-z_][A-Za-z0-9_]*=' "KEY=VALUE, e.g. --env LIBTPU_INIT_ARGS=..."
  done
  require_gcloud
  local args=()
  if [[ -n $DATA_DIR ]]; then args+=(--data-dir "$DATA_DIR"); fi
  for kv in ${ENV_VARS[@]+"${ENV_VARS[@]}"}; do args+=(--env "$kv"); done
  # --distributed: each host's jax.distributed.initialize() finds the slice's other hosts.
  args+=(-- --config "$CONFIG" --workdir "$WORKDIR" --distributed ${TRAINER_ARGS[@]+"${TRAINER_ARGS[@]}"})
  ssh_hosts all "$(remote_script "$SOURCE_NAME" worker-launch "${args[@]}")"
  if [[ $DRY_RUN != 1 ]]; then
    note "started on every host; follow it with: $PROG logs --name $NAME --zone $ZONE"
  fi
}

cmd_logs() {
  parse_flags "name zone project slices worker lines" "$@"
  check_slice_flags
  check worker "$WORKER" '^[0-9]+$' "a host index: 0 is the first host of the slice"
  check lines "$LINES" '^[0-9]+$' "a number of lines"
  require_gcloud
  ssh_first_host "$WORKER" "$(quote_words tail -n "$LINES" -F "$RUN_DIR_NAME/train.log")"
}

cmd_stop() {
  parse_flags "name zone project slices timeout" "$@"
  check_slice_flags
  check timeout "$TIMEOUT" '^[0-9]+$' "seconds to wait for the checkpoint to be written"
  require_gcloud
  ssh_hosts all "$(remote_script "$SOURCE_NAME" worker-stop --timeout "$TIMEOUT")"
}

cmd_status() {
  parse_flags "name zone project slices queued" "$@"
  check_slice_flags
  require_gcloud
  if ((QUEUED || SLICES > 1)); then
    gcloud_tpu queued-resources describe "$NAME" '--format=value(state.state)'
  else
    gcloud_tpu tpu-vm describe "$NAME" '--format=value(state,acceleratorType)'
  fi
  ssh_hosts all "$(remote_script "$SOURCE_NAME" worker-status)"
}

cmd_delete() {
  parse_flags "name zone project slices queued" "$@"
  check_slice_flags
  require_gcloud
  if ((QUEUED || SLICES > 1)); then
    # --force deletes the queued resource's TPU VMs first, then the request itself.
    gcloud_tpu queued-resources delete "$NAME" --force --quiet
  else
    gcloud_tpu tpu-vm delete "$NAME" --quiet
  fi
}

# --- worker-side commands (run on each TPU VM host) ----------------------------------------------

run_dir() { echo "$HOME/$RUN_DIR_NAME"; }

running_pid() {  # the pid of this host's trainer, if one is running
  local pid_file pid
  pid_file="$(run_dir)/train.pid"
  [[ -f $pid_file ]] || return 1
  pid=$(cat "$pid_file")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  # An exited trainer not yet reaped by init still answers kill -0: it is done all the same.
  [[ $(ps -o stat= -p "$pid" 2>/dev/null) != Z* ]] && echo "$pid"
}

find_uv() {  # uv: fetches a standalone CPython of the version asked for and installs fast
  if command -v uv >/dev/null 2>&1; then
    command -v uv
    return
  fi
  if [[ ! -x $HOME/.local/bin/uv ]]; then
    # From PyPI with the image's own Python (3.10 on the Ubuntu 22.04 TPU images); newer images
    # mark their Python as externally managed (PEP 668), hence the second try.
    python3 -m pip install --user --quiet uv >&2 ||
      python3 -m pip install --user --quiet --break-system-packages uv >&2
  fi
  echo "$HOME/.local/bin/uv"
}

make_venv() {  # make_venv UV DIR PYTHON_VERSION: a venv on that Python, recreated if on another
  local uv=$1 venv=$2 python=$3 have
  if [[ -x $venv/bin/python ]]; then
    have=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [[ $have != "$python" ]]; then rm -rf "$venv"; fi
  fi
  if [[ ! -x $venv/bin/python ]]; then "$uv" venv --python "$python" "$venv"; fi
}

cmd_worker_install() {
  parse_flags "source python" "$@"
  require source
  check_python
  local source_dir=$HOME/$SOURCE_NAME venv=$HOME/$VENV_NAME pid uv
  if [[ $SOURCE != /* ]]; then SOURCE=$HOME/$SOURCE; fi
  [[ -f $SOURCE/pyproject.toml ]] || die "$SOURCE holds no pyproject.toml: nothing to install"
  if pid=$(running_pid); then
    die "$(hostname): a run is going (pid $pid); stop it first ('$PROG stop') so its code is not replaced under it"
  fi
  if [[ $SOURCE != "$source_dir" ]]; then
    rm -rf "$source_dir"
    mv "$SOURCE" "$source_dir"
  fi
  uv=$(find_uv)
  make_venv "$uv" "$venv" "$PYTHON_VERSION"
  # jax[tpu] brings libtpu; gcsfs and google-cloud-storage let tfds/etils and TensorBoard use gs://.
  "$uv" pip install --python "$venv/bin/python" -e "${source_dir}[tpu]" gcsfs google-cloud-storage
  "$venv/bin/python" -c 'import sys, jax, fmjax; print("%s: python %s, jax %s" % (__import__("socket").gethostname(), sys.version.split()[0], jax.__version__))'
}

cmd_worker_prepare() {
  parse_flags "dataset data-dir python" "$@"
  require dataset data-dir
  check_python
  local venv=$HOME/$VENV_NAME prepare_venv=$HOME/$PREPARE_VENV_NAME work=$HOME/fmjax-prepare uv tfds_version
  [[ -x $venv/bin/python ]] || die "no $venv: run '$PROG install' first"
  uv=$(find_uv)
  # The same tensorflow-datasets as training reads with, so the files' format matches.
  tfds_version=$("$venv/bin/python" -c 'import tensorflow_datasets as t; print(t.__version__)')
  make_venv "$uv" "$prepare_venv" "$PYTHON_VERSION"
  "$uv" pip install --python "$prepare_venv/bin/python" tensorflow-cpu "tensorflow-datasets==$tfds_version" \
    array-record importlib_resources gcsfs
  # Built on local disk (ArrayRecord files are written locally), downloads kept out of the bucket.
  "$prepare_venv/bin/tfds" build "$DATASET" "--data_dir=$work/tfds" "--download_dir=$work/downloads" \
    --file_format=array_record
  gcloud storage rsync --recursive "$work/tfds" "$DATA_DIR"
  echo "$(hostname): $DATASET prepared in $DATA_DIR (launch with --data-dir $DATA_DIR)"
}

cmd_worker_launch() {
  parse_flags "data-dir env --" "$@"
  local dir pid kv log
  dir=$(run_dir)
  log=$dir/train.log
  mkdir -p "$dir"
  if pid=$(running_pid); then
    die "$(hostname): a run is still going (pid $pid); '$PROG stop' it first, or follow it with '$PROG logs'"
  fi
  ((${#TRAINER_ARGS[@]})) || die "worker-launch needs the trainer's flags after '--'"
  cd "$HOME/$SOURCE_NAME"
  if [[ -n $DATA_DIR ]]; then export FMJAX_DATA_DIR=$DATA_DIR; fi
  for kv in ${ENV_VARS[@]+"${ENV_VARS[@]}"}; do export "${kv?}"; done
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname): python -m fmjax.main $(quote_words "${TRAINER_ARGS[@]}")" >>"$log"
  # setsid + nohup + no terminal fds: the run outlives this ssh session and its hang-up.
  setsid nohup "$HOME/$VENV_NAME/bin/python" -m fmjax.main "${TRAINER_ARGS[@]}" >>"$log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$dir/train.pid"
  echo "$(hostname): started pid $pid, log $log"
}

cmd_worker_stop() {
  parse_flags "timeout" "$@"
  local pid start=$SECONDS
  if ! pid=$(running_pid); then
    echo "$(hostname): no run is going"
    return
  fi
  # SIGTERM: the trainer saves a checkpoint and exits, as on a preemption.
  kill -TERM "$pid"
  while running_pid >/dev/null; do
    if ((SECONDS - start >= TIMEOUT)); then
      die "$(hostname): pid $pid still running after ${TIMEOUT}s; see $(run_dir)/train.log"
    fi
    sleep 0.2
  done
  echo "$(hostname): stopped pid $pid after $((SECONDS - start))s"
}

cmd_worker_status() {
  parse_flags "" "$@"
  local pid log
  log="$(run_dir)/train.log"
  if pid=$(running_pid); then
    echo "$(hostname): training (pid $pid)"
  else
    echo "$(hostname): not training"
  fi
  if [[ -f $log ]]; then tail -n 2 "$log" | sed "s/^/  /"; fi
}

# --- main -----------------------------------------------------------------------------------------

main() {
  # --dry-run may stand anywhere, even among the trainer's flags (fmjax.main has no such flag,
  # and a launch meant as a dry run must not start); DRY_RUN=1 does the same.
  case ${DRY_RUN:-0} in "" | 0 | false | no) DRY_RUN=0 ;; *) DRY_RUN=1 ;; esac
  local args=() arg
  for arg in "$@"; do
    if [[ $arg == --dry-run ]]; then DRY_RUN=1; else args+=("$arg"); fi
  done
  set -- ${args[@]+"${args[@]}"}

  if (($# == 0)); then
    usage >&2
    exit 2
  fi
  COMMAND=$1
  shift
  case $COMMAND in
    -h | --help | help) usage; exit 0 ;;
  esac
  for arg in "$@"; do
    if [[ $arg == -- ]]; then break; fi
    if [[ $arg == -h || $arg == --help ]]; then usage; exit 0; fi
  done
  case $COMMAND in
    create) cmd_create "$@" ;;
    install) cmd_install "$@" ;;
    prepare) cmd_prepare "$@" ;;
    launch) cmd_launch "$@" ;;
    resume)
      note "resuming: the trainer restores the newest checkpoint in the workdir"
      cmd_launch "$@"
      ;;
    logs) cmd_logs "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    delete) cmd_delete "$@" ;;
    worker-install) cmd_worker_install "$@" ;;
    worker-prepare) cmd_worker_prepare "$@" ;;
    worker-launch) cmd_worker_launch "$@" ;;
    worker-stop) cmd_worker_stop "$@" ;;
    worker-status) cmd_worker_status "$@" ;;
    -*) die_usage "expected a command before '$COMMAND'" ;;
    *) die_usage "unknown command '$COMMAND' (create, install, prepare, launch, resume, logs, stop, status, delete)" ;;
  esac
}

main "$@"
