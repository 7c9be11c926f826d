"""The one non-finite error type (proxygap/errors.py)."""

from __future__ import annotations

import pickle

from proxygap.errors import NonFiniteError
from proxygap.optimize.loop import LoopResult


def test_non_finite_error_survives_pickling():
    """Worker processes send a failed run's error back pickled: the step, the message and the
    run so far must arrive intact."""
    err = NonFiniteError("loss is nan", step=7, result=LoopResult(history=[{"step": 5.0}]))
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is NonFiniteError and str(back) == "step 7: loss is nan"
    assert back.step == 7 and back.result.history == [{"step": 5.0}]


def test_a_study_stage_error_has_no_step():
    err = NonFiniteError("stage 'scores': 1 non-finite value(s) in 'gold'")
    assert str(err) == "stage 'scores': 1 non-finite value(s) in 'gold'" and err.step is None
    assert isinstance(err, FloatingPointError)
