"""tpu_setup.sh: the gcloud commands it prints under --dry-run, its argument checks, and what its
worker-side half does on a host, run here against a stand-in `gcloud` that executes each remote
command in a local "host home" (no Google Cloud needed)."""

import os
import pathlib
import shlex
import shutil
import stat
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tpu_setup.sh"
NAME, ZONE = "gpt2-run", "us-west4-a"
SLICE = ["--name", NAME, "--zone", ZONE]
BUCKET = "gs://fmjax-test-bucket"
COMMANDS = ("create", "install", "prepare", "launch", "resume", "logs", "stop", "status", "delete")


def run_script(*args, env=None, cwd=None):
  full_env = {k: v for k, v in os.environ.items() if k != "DRY_RUN"}
  full_env.update(env or {})
  return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env,
                        cwd=cwd, timeout=60)


def dry_run(*args, env=None):
  """The printed commands, each split the way a shell would read it."""
  result = run_script("--dry-run", *args, env=env)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()]


def flag(argv, name):
  """The value of `--name=value` in argv (the form the script writes gcloud flags in)."""
  values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def remote_argv(argv):
  """The command an ssh line runs on the host, split as the host's shell would."""
  return shlex.split(flag(argv, "command"))


def test_help_lists_every_command():
  result = run_script("--help")
  assert result.returncode == 0
  for command in COMMANDS:
    assert f"\n  {command} " in result.stdout, command
  assert run_script("launch", "--help").returncode == 0


@pytest.mark.parametrize("args, message", [
    ([], "Usage"),
    (["frobnicate", *SLICE], "unknown command 'frobnicate'"),
    (["create", "--zone", ZONE, "--accelerator-type", "v5litepod-16"], "--name"),
    (["create", "--name", NAME, "--accelerator-type", "v5litepod-16"], "--zone"),
    (["create", *SLICE], "--accelerator-type"),
    (["create", *SLICE, "--accelerator-type", "v5e-16"], "--accelerator-type=v5e-16"),
    (["create", *SLICE, "--accelerator-type", "tpu-16"], "--accelerator-type=tpu-16"),
    (["create", "--name", "GPT2", "--zone", ZONE, "--accelerator-type", "v4-8"], "--name=GPT2"),
    (["create", "--name", NAME, "--zone", "west", "--accelerator-type", "v4-8"], "--zone=west"),
    (["create", *SLICE, "--accelerator-type", "v4-8", "--spot", "--preemptible"], "--preemptible"),
    (["create", *SLICE, "--accelerator-type", "v4-8", "--queued", "--preemptible"], "--preemptible"),
    (["create", *SLICE, "--accelerator-type", "v4-8", "--slices", "2"], "--queued"),
    (["create", *SLICE, "--accelerator-type", "v4-8", "--workdir", BUCKET], "--workdir"),
    (["create", "--name", "--zone", ZONE, "--accelerator-type", "v4-8"], "--name needs a value"),
    (["install", *SLICE, "--python", "3.10"], "--python=3.10"),
    (["install", *SLICE, "--repo", "https://example.org/fmjax.git", "--from-local", str(ROOT)], "--from-local"),
    (["install", *SLICE, "--from-local", "/"], "--from-local=/"),
    (["install", *SLICE, "--ref", "main"], "--ref"),
    (["prepare", *SLICE, "--data-dir", f"{BUCKET}/tfds"], "--dataset"),
    (["prepare", *SLICE, "--dataset", "lm1b", "--data-dir", "/data/tfds"], "--data-dir=/data/tfds"),
    (["prepare", *SLICE, "--dataset", "lm1b", "--data-dir", f"{BUCKET}/tfds", "--", "--x"], "'--'"),
    (["launch", *SLICE, "--workdir", f"{BUCKET}/runs/a"], "--config"),
    (["launch", *SLICE, "--config", "experiments/gpt.py:gpt2"], "--workdir"),
    (["launch", *SLICE, "--config", "experiments/gpt.py:gpt2", "--workdir", "/tmp/run"], "--workdir=/tmp/run"),
    (["launch", *SLICE, "--config", "experiments/gpt.py:gpt2", "--workdir", "runs/a"], "--workdir=runs/a"),
    (["resume", *SLICE, "--config", "experiments/gpt.py:gpt2", "--workdir", "/tmp/run"], "--workdir=/tmp/run"),
    (["launch", *SLICE, "--config", "gpt2", "--workdir", f"{BUCKET}/runs/a"], "--config=gpt2"),
    (["launch", *SLICE, "--config", "experiments/gpt.py:gpt2", "--workdir", f"{BUCKET}/runs/a",
      "--env", "NOEQUALS"], "--env=NOEQUALS"),
    (["logs", *SLICE, "--worker", "first"], "--worker=first"),
])
def test_bad_arguments_exit_2_naming_the_flag(args, message):
  result = run_script(*args, "--dry-run")
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert message in result.stderr
  assert not any(line.startswith("gcloud") for line in result.stdout.splitlines())


def test_create_spot_v5e_16():
  [argv] = dry_run("create", *SLICE, "--accelerator-type", "v5litepod-16", "--spot")
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", NAME]
  assert flag(argv, "zone") == ZONE
  assert flag(argv, "accelerator-type") == "v5litepod-16"
  assert flag(argv, "version") == "v2-alpha-tpuv5-lite"
  assert "--spot" in argv and "--preemptible" not in argv
  assert not any(a.startswith("--project") for a in argv)


def test_create_queued_spot():
  [argv] = dry_run("create", *SLICE, "--accelerator-type", "v5litepod-16", "--spot", "--queued")
  assert argv[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", NAME]
  assert flag(argv, "node-id") == NAME
  assert flag(argv, "runtime-version") == "v2-alpha-tpuv5-lite"
  assert flag(argv, "accelerator-type") == "v5litepod-16"
  assert flag(argv, "zone") == ZONE
  assert "--spot" in argv


def test_create_multislice_queued():
  [argv] = dry_run("create", *SLICE, "--accelerator-type", "v5litepod-16", "--queued", "--slices", "2")
  assert argv[3:5] == ["queued-resources", "create"]
  assert flag(argv, "node-count") == "2" and flag(argv, "node-prefix") == NAME
  assert not any(a.startswith("--node-id") for a in argv)


@pytest.mark.parametrize("accelerator, runtime", [
    ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5"), ("v6e-16", "v2-alpha-tpuv6e"),
    ("v4-32", "tpu-ubuntu2204-base"), ("v3-8", "tpu-ubuntu2204-base"),
])
def test_create_picks_the_runtime_by_family(accelerator, runtime):
  [argv] = dry_run("create", *SLICE, "--accelerator-type", accelerator, "--preemptible")
  assert flag(argv, "version") == runtime
  assert "--preemptible" in argv
  [argv] = dry_run("create", *SLICE, "--accelerator-type", accelerator, "--version=my-runtime")
  assert flag(argv, "version") == "my-runtime"


def test_install_from_local_copies_the_working_tree_to_every_host():
  tar_argv, scp_argv, ssh_argv = dry_run("install", *SLICE)
  assert tar_argv[0] == "tar" and tar_argv[tar_argv.index("-C") + 1] == str(ROOT)
  archive = tar_argv[tar_argv.index("-czf") + 1]
  assert scp_argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp_argv[5] == archive and scp_argv[6] == f"{NAME}:fmjax-src.tar.gz"
  assert flag(scp_argv, "worker") == "all" and flag(scp_argv, "zone") == ZONE
  assert ssh_argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME]
  assert flag(ssh_argv, "worker") == "all"
  remote = remote_argv(ssh_argv)
  assert remote[remote.index("tar"):remote.index("tar") + 5] == ["tar", "-xzf", "fmjax-src.tar.gz", "-C", "fmjax.new"]
  install = remote[remote.index("bash"):]
  assert install[:3] == ["bash", "fmjax.new/tpu_setup.sh", "worker-install"]
  assert install[install.index("--python") + 1] == "3.12"


def test_install_from_a_repository_on_every_slice():
  lines = dry_run("install", *SLICE, "--repo", "https://example.org/me/fmjax.git", "--ref", "v1.2",
                  "--python", "3.11", "--slices", "2")
  assert [argv[5] for argv in lines] == [f"{NAME}-0", f"{NAME}-1"]
  for argv in lines:
    assert argv[3:5] == ["tpu-vm", "ssh"] and flag(argv, "worker") == "all"
    remote = remote_argv(argv)
    clone = remote[remote.index("git"):remote.index("git") + 7]
    assert clone == ["git", "clone", "--depth", "1", "--branch", "v1.2", "https://example.org/me/fmjax.git"]
    assert remote[remote.index("--python") + 1] == "3.11"


def test_prepare_builds_array_record_on_host_0():
  [argv] = dry_run("prepare", *SLICE, "--dataset", "lm1b", "--data-dir", f"{BUCKET}/tfds")
  assert argv[3:6] == ["tpu-vm", "ssh", NAME]
  assert flag(argv, "worker") == "0"
  remote = remote_argv(argv)
  assert remote[:3] == ["bash", "fmjax/tpu_setup.sh", "worker-prepare"]
  assert remote[remote.index("--dataset") + 1] == "lm1b"
  assert remote[remote.index("--data-dir") + 1] == f"{BUCKET}/tfds"


LAUNCH = ["--config", "experiments/gpt.py:gpt2", "--workdir", f"{BUCKET}/runs/gpt2"]


def test_launch_runs_the_distributed_trainer_on_all_workers():
  tricky = "--config.data.files=/my data/it's *.txt"  # spaces, a quote and a glob survive intact
  [argv] = dry_run("launch", *SLICE, *LAUNCH, "--data-dir", f"{BUCKET}/tfds", "--env", "LIBTPU_INIT_ARGS=--a=1 --b",
                   "--", "--config.train.steps=1000", tricky)
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME]
  assert flag(argv, "worker") == "all" and flag(argv, "zone") == ZONE
  remote = remote_argv(argv)
  assert remote[:3] == ["bash", "fmjax/tpu_setup.sh", "worker-launch"]
  assert remote[remote.index("--data-dir") + 1] == f"{BUCKET}/tfds"
  assert remote[remote.index("--env") + 1] == "LIBTPU_INIT_ARGS=--a=1 --b"
  trainer = remote[remote.index("--") + 1:]
  assert trainer == [*LAUNCH, "--distributed", "--config.train.steps=1000", tricky]


def test_resume_is_launch_again_and_dry_run_can_stand_anywhere():
  launch = dry_run("launch", *SLICE, *LAUNCH, "--", "--config.train.steps=10")
  assert dry_run("resume", *SLICE, *LAUNCH, "--", "--config.train.steps=10") == launch
  by_env = run_script("resume", *SLICE, *LAUNCH, "--", "--config.train.steps=10", env={"DRY_RUN": "1"})
  assert by_env.returncode == 0 and [shlex.split(x) for x in by_env.stdout.splitlines()] == launch
  at_end = run_script("launch", *SLICE, *LAUNCH, "--", "--config.train.steps=10", "--dry-run")
  assert at_end.returncode == 0 and [shlex.split(x) for x in at_end.stdout.splitlines()] == launch
  assert "--dry-run" not in remote_argv(launch[0])


def test_launch_reaches_every_slice_of_a_multislice_run():
  lines = dry_run("launch", *SLICE, *LAUNCH, "--slices", "3", "--", "--config.mesh.dcn_data=3")
  assert [argv[5] for argv in lines] == [f"{NAME}-0", f"{NAME}-1", f"{NAME}-2"]
  assert all(remote_argv(argv)[-1] == "--config.mesh.dcn_data=3" for argv in lines)


def test_logs_stop_status_delete():
  [logs] = dry_run("logs", *SLICE)
  assert flag(logs, "worker") == "0" and remote_argv(logs) == ["tail", "-n", "100", "-F", "fmjax-run/train.log"]
  [logs] = dry_run("logs", *SLICE, "--worker", "3", "--lines", "20")
  assert flag(logs, "worker") == "3" and remote_argv(logs)[:3] == ["tail", "-n", "20"]
  [stop] = dry_run("stop", *SLICE)
  assert flag(stop, "worker") == "all" and remote_argv(stop)[:3] == ["bash", "fmjax/tpu_setup.sh", "worker-stop"]
  describe, hosts = dry_run("status", *SLICE)
  assert describe[3:6] == ["tpu-vm", "describe", NAME] and remote_argv(hosts)[2] == "worker-status"
  describe, _ = dry_run("status", *SLICE, "--queued")
  assert describe[3:6] == ["queued-resources", "describe", NAME]
  [delete] = dry_run("delete", *SLICE)
  assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", NAME] and "--quiet" in delete
  [delete] = dry_run("delete", *SLICE, "--queued")
  assert delete[3:6] == ["queued-resources", "delete", NAME] and "--force" in delete


def test_project_goes_on_every_gcloud_command():
  lines = (dry_run("create", *SLICE, "--accelerator-type", "v4-8", "--project", "my-project-1")
           + dry_run("install", *SLICE, "--project=my-project-1")
           + dry_run("launch", *SLICE, *LAUNCH, "--project", "my-project-1"))
  gcloud_lines = [argv for argv in lines if argv[0] == "gcloud"]
  assert len(gcloud_lines) == 4
  assert all(flag(argv, "project") == "my-project-1" for argv in gcloud_lines)


def test_shellcheck_is_clean():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed")
  result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout


# --- the worker half, run on stand-in hosts -------------------------------------------------------

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Stands in for gcloud: logs each call; ssh runs --command in the host's home, scp copies there.
set -euo pipefail
printf '%s\n' "$*" >> "$FAKE_CALLS"
if [[ "$1 $2 $3 $4" == "compute tpus tpu-vm ssh" ]]; then
  for arg in "$@"; do
    if [[ $arg == --command=* ]]; then command=${arg#--command=}; fi
  done
  cd "$FAKE_HOST_HOME" && HOME=$FAKE_HOST_HOME exec bash -c "$command"
elif [[ "$1 $2 $3 $4" == "compute tpus tpu-vm scp" ]]; then
  cp "$5" "$FAKE_HOST_HOME/${6#*:}"
fi
"""

FAKE_UV = r"""#!/usr/bin/env bash
# Stands in for uv: `venv` makes a venv whose python is the stand-in trainer; `pip` is logged.
set -euo pipefail
printf 'uv %s\n' "$*" >> "$HOME/uv-calls"
if [[ $1 == venv ]]; then
  mkdir -p "$4/bin"
  cp "$FAKE_PYTHON" "$4/bin/python"
fi
"""

FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stands in for the venv's python: answers version checks; as `-m fmjax.main` it records how it
# was started, then trains until SIGTERM, which it answers by "saving" and exiting.
if [[ $1 == -c ]]; then echo 3.12; exit 0; fi
printf '%s\n' "$@" > "$HOME/trainer-argv"
printf '%s\n' "${FMJAX_DATA_DIR:-unset}" "$PWD" > "$HOME/trainer-env"
trap 'echo "saved at SIGTERM" >> "$HOME/trainer-events"; exit 0' TERM
echo "step 1/1000"
while true; do sleep 0.05; done
"""


def write_executable(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def hosts(tmp_path):
  """A laptop checkout (git repo), a stand-in gcloud and uv on PATH, and one host's home."""
  checkout = tmp_path / "checkout"
  (checkout / "fmjax").mkdir(parents=True)
  (checkout / "fmjax" / "__init__.py").write_text("")
  (checkout / "pyproject.toml").write_text("[project]\nname = 'fmjax'\n")
  (checkout / ".gitignore").write_text("ignored_run/\n")
  (checkout / "ignored_run").mkdir()
  (checkout / "ignored_run" / "big.bin").write_text("x")
  (checkout / "untracked.txt").write_text("kept: not ignored\n")
  shutil.copy(SCRIPT, checkout / "tpu_setup.sh")
  subprocess.run(["git", "init", "-q", str(checkout)], check=True)
  subprocess.run(["git", "-C", str(checkout), "add", "fmjax", "pyproject.toml", ".gitignore", "tpu_setup.sh"],
                 check=True)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  write_executable(bin_dir / "gcloud", FAKE_GCLOUD)
  write_executable(bin_dir / "uv", FAKE_UV)
  write_executable(tmp_path / "python", FAKE_PYTHON)
  host = tmp_path / "host"
  host.mkdir()
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_CALLS": str(tmp_path / "calls"),
         "FAKE_HOST_HOME": str(host), "FAKE_PYTHON": str(tmp_path / "python")}
  yield checkout, host, env
  pid_file = host / "fmjax-run" / "train.pid"
  if pid_file.exists():  # a failed test may leave its stand-in trainer running: end it by its id
    try:
      os.kill(int(pid_file.read_text()), 15)
    except (ProcessLookupError, ValueError):
      pass


def wait_for(predicate, seconds=10.0):
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    if predicate():
      return True
    time.sleep(0.05)
  return False


def test_install_launch_stop_resume_on_a_host(hosts, tmp_path):
  checkout, host, env = hosts
  script = str(checkout / "tpu_setup.sh")

  def sh(*args):
    return subprocess.run(["bash", script, *args], capture_output=True, text=True, env={**os.environ, **env},
                          timeout=60)

  result = sh("install", *SLICE, "--from-local", str(checkout))
  assert result.returncode == 0, result.stderr
  installed = host / "fmjax"
  # What git would commit: tracked files and untracked ones that are not ignored.
  files = sorted(p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file())
  assert files == [".gitignore", "fmjax/__init__.py", "pyproject.toml", "tpu_setup.sh", "untracked.txt"]
  assert not (host / "fmjax.new").exists()
  assert not (host / "fmjax-src.tar.gz").exists()
  uv_calls = (host / "uv-calls").read_text()
  assert "venv --python 3.12" in uv_calls
  assert f"-e {installed}[tpu]" in uv_calls

  result = sh("launch", *SLICE, *LAUNCH, "--data-dir", f"{BUCKET}/tfds", "--", "--config.train.steps=1000")
  assert result.returncode == 0, result.stderr
  assert wait_for(lambda: (host / "trainer-env").exists())
  argv = (host / "trainer-argv").read_text().splitlines()
  assert argv == ["-m", "fmjax.main", *LAUNCH, "--distributed", "--config.train.steps=1000"]
  assert (host / "trainer-env").read_text().splitlines() == [f"{BUCKET}/tfds", str(installed)]
  assert wait_for(lambda: "step 1/1000" in (host / "fmjax-run" / "train.log").read_text())
  pid = int((host / "fmjax-run" / "train.pid").read_text())
  os.kill(pid, 0)  # running, detached from the ssh command that started it

  again = sh("launch", *SLICE, *LAUNCH)
  assert again.returncode != 0 and "still going" in again.stderr
  reinstall = sh("install", *SLICE, "--from-local", str(checkout))
  assert reinstall.returncode != 0 and "stop it first" in reinstall.stderr
  status = sh("status", *SLICE)
  assert f"training (pid {pid})" in status.stdout

  stop = sh("stop", *SLICE, "--timeout", "20")
  assert stop.returncode == 0, stop.stderr
  assert f"stopped pid {pid}" in stop.stdout
  assert (host / "trainer-events").read_text() == "saved at SIGTERM\n"
  assert "not training" in sh("status", *SLICE).stdout
  assert "no run is going" in sh("stop", *SLICE).stdout

  resume = sh("resume", *SLICE, *LAUNCH)
  assert resume.returncode == 0, resume.stderr
  assert wait_for(lambda: int((host / "fmjax-run" / "train.pid").read_text()) != pid)
  assert sh("stop", *SLICE).returncode == 0
  # The refused reinstall left the running code and its venv alone.
  assert (host / "uv-calls").read_text().count("uv pip install") == 1
  assert (installed / "tpu_setup.sh").exists()


def test_prepare_on_a_host_builds_array_record_and_copies_it_to_the_bucket(hosts, tmp_path):
  checkout, host, env = hosts
  installed = host / "fmjax"
  shutil.copytree(checkout, installed)
  venv_bin = host / "fmjax-venv" / "bin"
  venv_bin.mkdir(parents=True)
  write_executable(venv_bin / "python", "#!/usr/bin/env bash\necho 4.9.10\n")
  # The prepare venv's tfds records its arguments (its python comes from the stand-in uv).
  tfds = host / "fmjax-prepare-venv" / "bin" / "tfds"
  tfds.parent.mkdir(parents=True)
  write_executable(tfds, '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$HOME/tfds-argv"\n')
  result = subprocess.run(["bash", str(checkout / "tpu_setup.sh"), "prepare", *SLICE, "--dataset", "lm1b",
                           "--data-dir", f"{BUCKET}/tfds"], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)
  assert result.returncode == 0, result.stderr
  tfds_argv = (host / "tfds-argv").read_text().splitlines()
  assert tfds_argv[:2] == ["build", "lm1b"]
  assert "--file_format=array_record" in tfds_argv
  assert f"--data_dir={host}/fmjax-prepare/tfds" in tfds_argv
  uv_calls = (host / "uv-calls").read_text()
  assert "tensorflow-cpu" in uv_calls and "tensorflow-datasets==4.9.10" in uv_calls
  calls = (tmp_path / "calls").read_text().splitlines()
  assert calls[-1] == f"storage rsync --recursive {host}/fmjax-prepare/tfds {BUCKET}/tfds"
