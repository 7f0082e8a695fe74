"""A process killed while it writes a checkpoint every step leaves only complete checkpoints."""

import signal
import subprocess
import sys
import textwrap

from helpers import REPO, make_state

from landscape.checkpoints import Checkpointer


def test_sigkill_while_saving_every_step_leaves_only_complete_checkpoints(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, jax.numpy as jnp
        sys.path.insert(0, {str(REPO / "tests")!r})
        from helpers import make_state
        from landscape.checkpoints import Checkpointer
        ckpt = Checkpointer({str(tmp_path / "c")!r})
        state = make_state()
        step = 0
        while True:
            ckpt.save(step, state)
            state = state.replace(step=jnp.asarray(step, jnp.int32))
            step += 1
            if step == 20:
                print("ready", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = Checkpointer(tmp_path / "c")
    steps = ckpt.steps()
    assert len(steps) >= 1
    for step in steps:  # every listed checkpoint reads back whole
        ckpt.restore(step, make_state())
    ckpt.close()
