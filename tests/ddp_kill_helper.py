"""`repro-train` whose rank KILL_RANK kills itself with SIGKILL (no clean-up, as an OOM killer or a
dead node would) inside its KILL_AT_CALL-th training micro-batch: the crash of the DDP resume test
(tests/test_distributed.py). Run under torchrun as a script."""
import os
import signal

from repro.cli.train import main
from repro.tasks import CifarClassification

_real_loss = CifarClassification.loss
_calls = []


def _loss(self, model, batch):
    _calls.append(1)
    if int(os.environ.get("RANK", "0")) == int(os.environ["KILL_RANK"]) and len(_calls) == int(os.environ["KILL_AT_CALL"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_loss(self, model, batch)


if __name__ == "__main__":
    CifarClassification.loss = _loss
    main()
