"""losses.csv (for `dvc plots`) and losses.png from a loss history; results.png, the run on one
page."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.reporting.train import _headline, write_loss_reports, write_results_figure


def test_losses_csv_has_the_total_first_then_the_terms_then_lr(tmp_path):
    history = [
        {"step": 2, "loss_mask": 0.5, "loss": 2.0, "lr": 0.001, "loss_box": 1 / 3},
        {"step": 4, "loss_mask": 0.25, "loss": 1.0, "lr": 0.0005},  # no loss_box logged
    ]
    write_loss_reports(history, tmp_path / "reports")
    lines = (tmp_path / "reports" / "losses.csv").read_text().splitlines()
    assert lines == [
        "step,loss,loss_box,loss_mask,lr",
        "2,2,0.333333,0.5,0.001",
        "4,1,nan,0.25,0.0005",
    ]
    picture = np.asarray(Image.open(tmp_path / "reports" / "losses.png"))
    assert picture.ndim == 3 and picture.shape[0] > 100 and picture.std() > 0
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["losses.csv", "losses.png"]


@pytest.mark.filterwarnings("ignore:No artists with labels found:UserWarning")
def test_an_empty_history_writes_a_header(tmp_path):
    write_loss_reports([], tmp_path)
    assert (tmp_path / "losses.csv").read_text() == "step\n"
    assert (tmp_path / "losses.png").is_file()


SUMMARY = {
    "stopped": "early_stop",
    "iterations": 6,
    "best_iteration": 4,
    "best_metric": "segm_AP",
    "best_value": 0.5,
    "kept": "best",
    "kept_iteration": 4,
    "weights": "ema",
}


def test_results_figure_says_why_it_stopped_and_which_checkpoint_is_the_model(tmp_path):
    history = [{"step": s, "loss": 2.0 / s, "loss_mask": 1.0 / s, "lr": 1e-3} for s in (2, 4, 6)]
    validations = [{"step": 2, "segm_AP": 0.2, "bbox_AP": 0.3}, {"step": 4, "segm_AP": 0.5}]
    write_results_figure(history, validations, SUMMARY, tmp_path)
    picture = np.asarray(Image.open(tmp_path / "results.png"))
    assert picture.ndim == 3 and picture.shape[0] > 500 and picture.std() > 0
    headline = _headline(SUMMARY)
    assert "stopped: early stop at iteration 6" in headline
    assert "model: best checkpoint, iteration 4 (best val segm AP 0.500 @ 4)" in headline


def test_results_figure_without_validation(tmp_path):
    summary = SUMMARY | {"stopped": "iterations", "best_iteration": None, "best_value": None}
    write_results_figure([{"step": 2, "loss": 1.0, "lr": 1e-3}], [], summary, tmp_path)
    assert (tmp_path / "results.png").is_file()
    assert "ran all 6 iterations" in _headline(summary)
