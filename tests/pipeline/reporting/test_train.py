"""losses.csv (for `dvc plots`) and losses.png from a loss history."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.reporting.train import write_loss_reports


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
