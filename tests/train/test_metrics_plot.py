"""What the user sees at the end of a run: the outcome line and the loss plot."""

from PIL import Image

from optbench_jax.train import loop, metrics


def test_outcome_line_shows_the_floor_and_the_gap_with_four_decimals():
  summary = dict(status="completed", steps=600, final_eval_loss=2.081234567890123,
                 loss_floor=2.05, workdir="runs/tiny")
  assert loop.outcome_line(summary) == ("completed: 600 steps, final eval loss 2.0812 (loss "
                                        "floor 2.0500, gap 0.0312), workdir runs/tiny")
  diverged = dict(status="diverged", steps=7, final_eval_loss=None, loss_floor=2.05,
                  message="non-finite training loss (nan) at step 7", workdir="w")
  assert loop.outcome_line(diverged) == ("diverged: 7 steps (non-finite training loss (nan) at "
                                         "step 7), workdir w")


def test_loss_plot_adds_a_gap_panel_when_the_floor_is_known(tmp_path):
  records = [{"step": s, "loss": 2.0 + 4.0 / s} for s in range(1, 200)]
  records += [{"step": s, "eval_loss": 2.0 + 4.0 / s} for s in (50, 100, 199)]
  metrics.plot_loss_curve(records, str(tmp_path / "with_floor.png"), loss_floor=2.0)
  metrics.plot_loss_curve(records, str(tmp_path / "without.png"))
  with_floor = Image.open(tmp_path / "with_floor.png").size
  without = Image.open(tmp_path / "without.png").size
  assert with_floor[0] == 2 * without[0] and with_floor[1] == without[1]
