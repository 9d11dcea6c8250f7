"""The session factory (``graphopt.core.sessions``): a session for a run beside other work (one intra-op thread,
no spinning) computes what the default one does, and only the caller that asks for it gets it."""
from __future__ import annotations

import numpy as np

from graphopt.core.runner import Runner
from graphopt.core.sessions import create_session, session_options
from graphopt.testing import model_from_text

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 8] x) => (float[2, 8] y) {
    e = Exp(x)
    y = Softmax<axis = -1>(e)
}
"""
SPINNING = "session.intra_op.allow_spinning"


def _spinning(opts) -> str | None:
    """The pool's spinning entry, None when unset (onnxruntime's default: spinning)."""
    try:
        return opts.get_session_config_entry(SPINNING)
    except Exception:  # noqa: BLE001 - onnxruntime raises for a key never set
        return None


def test_a_quiet_pool_is_asked_for_and_only_then():
    quiet = session_options("compare", 1, spinning=False)
    assert quiet.intra_op_num_threads == 1
    assert _spinning(quiet) == "0"
    for purpose in ("compare", "evaluate", "deploy"):
        default = create_session(model_from_text(MODEL), purpose).get_session_options()
        assert default.intra_op_num_threads == 0  # onnxruntime's own choice
        assert _spinning(default) is None


def test_a_quiet_runner_gives_the_same_outputs():
    model = model_from_text(MODEL)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    quiet = Runner(model, threads=1, spinning=False)
    assert quiet.session.get_session_options().intra_op_num_threads == 1
    assert _spinning(quiet.session.get_session_options()) == "0"
    np.testing.assert_array_equal(quiet.run([x])["y"], Runner(model).run([x])["y"])
