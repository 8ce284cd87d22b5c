"""Early stopping (`Patience`), the time budget (`Budget`) and whether a stopped run stays
stopped when it is started again (`still_stopped`)."""

from __future__ import annotations

import math

from pipeline.training.stopping import Budget, Patience, still_stopped


def test_patience_stops_after_that_many_validations_without_a_strict_improvement():
    p = Patience(2)
    seen = []
    for it, value in [(10, 0.1), (20, 0.3), (30, 0.3), (40, 0.2), (50, 0.5)]:
        p.validated(it, value)
        seen.append(p.exhausted)
    # 0.3 at 30 ties the best (not an improvement), 0.2 at 40 is the second miss: stop there
    assert seen == [False, False, False, True, False]
    assert (p.best, p.best_iteration) == (0.5, 50)


def test_a_nan_validation_never_improves_and_patience_0_never_stops():
    p = Patience(1)
    assert not p.validated(10, math.nan) and p.best is None and p.exhausted
    off = Patience(0)
    for it in range(5):
        off.validated(it, 0.0)
    assert not off.exhausted and off.best_iteration == 0


def test_patience_resumes_counting_where_it_was():
    p = Patience(3)
    for it, value in [(1, 0.4), (2, 0.1), (3, 0.2)]:
        p.validated(it, value)
    again = Patience(3)
    again.load_state_dict(p.state_dict())
    assert not again.exhausted
    again.validated(4, 0.3)
    assert again.exhausted and again.best_iteration == 1


def test_the_budget_counts_the_earlier_attempts():
    assert not Budget(0).exhausted  # 0: no budget
    assert not Budget(1.0, already_s=30).exhausted
    assert Budget(1.0, already_s=60).exhausted
    assert Budget(0.5, already_s=40).elapsed() >= 40


def test_a_stopped_run_continues_only_when_its_limit_was_raised():
    tired = Patience(1)
    tired.validated(1, 0.5)
    tired.validated(2, 0.4)
    patient = Patience(5)
    patient.load_state_dict(tired.state_dict())
    assert still_stopped("early_stop", tired, Budget(0))
    assert not still_stopped("early_stop", patient, Budget(0))
    assert still_stopped("time_budget", tired, Budget(1.0, already_s=60))
    assert not still_stopped("time_budget", tired, Budget(2.0, already_s=60))
    assert not still_stopped("time_budget", tired, Budget(0, already_s=60))  # budget off
    assert not still_stopped("iterations", tired, Budget(1.0, already_s=60))
    assert not still_stopped(None, tired, Budget(1.0, already_s=60))
