"""kill -9 at any moment loses nothing: benchmarks/kill_trials.py's trials, two by default, 20 slow.

Each trial SIGKILLs a real `python -m fmjax.main` run and relaunches it; see the script's
docstring for the checks (resume from the newest complete checkpoint, every step's loss equal
to an uninterrupted run's bit for bit, no temporary folder restored or in the way).
"""

import dataclasses
import random

import pytest

from conftest import load_module


kill_trials = load_module("benchmarks/kill_trials.py", "kill_trials")


def test_two_kills_lose_nothing(tmp_path):
  """A kill at a random moment of training, and one the moment a save's temporary folder
  appears; both relaunches resume from the newest complete save and match the reference."""
  shape = kill_trials.RunShape(steps=30, every=5, keep=3)
  reference = kill_trials.run_reference(tmp_path, shape)
  assert sorted(reference.losses) == list(range(1, 31))

  # A seeded moment inside training (wall-clock draws land anywhere on a machine whose load
  # varies): after a random step, plus a random part of a step or a save.
  rng = random.Random(0)
  random_kill = kill_trials.KillPlan("step", after_step=rng.randint(6, 28), delay_s=rng.uniform(0.0, 0.1))
  save_kill = kill_trials.KillPlan("save", save_number=3, delay_s=0.0)
  plans = [kill_trials.TrialPlan(0, (random_kill,)), kill_trials.TrialPlan(1, (save_kill,))]
  results = [kill_trials.run_trial(plan, reference, tmp_path) for plan in plans]
  for result in results:
    print(kill_trials.format_trial(result))
    assert result.survived, kill_trials.format_trial(result)
    assert result.returncode == 0
    assert result.losses == reference.losses
    assert result.final.complete == shape.expected_checkpoints() == (20, 25, 30)
    kill = result.kills[0]
    assert kill.at_s is not None, "the run ended before the kill"
    assert kill_trials.start_step(result.output) == (kill.after.newest or 0)

  saving = results[1].kills[0]
  assert saving.phase == "saving" and saving.save_interrupted
  # The third save (step 15) was cut: the relaunch starts from step 10, never from the temporary 15.
  assert saving.after.newest == 10 and any(name.startswith("15.") for name in saving.after.temporary)
  assert kill_trials.resumed_step(results[1].output) == 10
  assert kill_trials.tally(results).startswith("2 trials: 2 survived, 0 lost data, ")


def _fake_result(kill_trials, reference, **changes):
  """A trial that survived (one kill at step 12 with step 10 saved, resumed at 10), with
  `changes` applied: to show that check_trial catches each kind of loss."""
  kill = kill_trials.KillRecord(kill_trials.KillPlan("save"), at_s=1.0, phase="saving", started_from=0,
                                resumed_from=None, after=kill_trials.Snapshot((5, 10), ("15.orbax-checkpoint-tmp",)),
                                save_interrupted=True, progress=12)
  fields = dict(plan=kill_trials.TrialPlan(0, (kill.plan,)), kills=(kill,), returncode=0,
                output="resumed from /w/checkpoints at step 10\nsteps 10 -> 20\ndone at step 20: ...",
                final=kill_trials.Snapshot((10, 15, 20)), losses=dict(reference.losses),
                eval_loss=reference.eval_loss, broken_lines=(), wall_s=1.0)
  fields.update(changes)
  return kill_trials.TrialResult(**fields)


def test_check_trial_catches_each_kind_of_loss():
  shape = kill_trials.RunShape(steps=20, every=5, keep=3)
  losses = {s: 5.0 - s / 10 for s in range(1, 21)}
  reference = kill_trials.Reference(shape, losses, 3.5, 10.0, 5.0, None)
  check = lambda **changes: kill_trials.check_trial(_fake_result(kill_trials, reference, **changes), reference)
  assert check() == []
  # Restored the temporary step 15 instead of the complete 10.
  tmp_restored = check(output="resumed from /w/checkpoints at step 15\nsteps 15 -> 20\ndone at step 20")
  assert any(f.startswith("resumed from 15") for f in tmp_restored)
  assert any(f.startswith("started at step 15") for f in tmp_restored)
  # Started from scratch although step 10 was saved: 12 steps recomputed where 2 were unsaved.
  scratch = check(output="steps 0 -> 20\ndone at step 20")
  assert any(f.startswith("started at step 0") for f in scratch)
  assert any(f.startswith("recomputed 12 steps") for f in scratch)
  one_loss_off = dict(losses)
  one_loss_off[13] = losses[13] + 1e-7
  assert any(f.startswith("loss differs at steps [13]") for f in check(losses=one_loss_off))
  assert any(f.startswith("missing steps [20]") for f in check(losses={s: l for s, l in losses.items() if s < 20}))
  assert any(f.startswith("eval loss") for f in check(eval_loss=3.6))
  assert any(f.startswith("checkpoints [10, 20]") for f in check(final=kill_trials.Snapshot((10, 20))))
  assert any(f.startswith("broken metrics") for f in check(broken_lines=('{"step": 7, "tr',)))
  assert any(f.startswith("final launch exited 1") for f in check(returncode=1))
  lost = _fake_result(kill_trials, reference, losses=one_loss_off)
  lost = dataclasses.replace(lost, failures=tuple(kill_trials.check_trial(lost, reference)))
  assert lost.lost_data and not lost.survived
  assert kill_trials.tally([lost]) == "1 trials: 0 survived, 1 lost data, 1 killed during a save"


@pytest.mark.slow
def test_twenty_kills_lose_nothing(tmp_path, capsys):
  """The full script: 20 trials (40% aimed at saves, 30% with a second kill), seed 0."""
  code = kill_trials.main(["--trials", "20", "--seed", "0", "--workroot", str(tmp_path)])
  out = capsys.readouterr().out
  print(out)
  assert code == 0, out
  assert "20 trials: 20 survived, 0 lost data" in out
