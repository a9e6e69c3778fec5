"""Suite-wide isolation: nothing the tests run reads or writes the real user's configuration.

The master key's default file is ``$XDG_CONFIG_HOME/maif/master.key`` (docs/adr/0081): a test (or a
``maif serve`` it starts, which inherits the environment) that opens a security manager without a key
would otherwise create one in the home directory of whoever runs the suite, and later runs would reuse it.
`maif audit verify` remembers the heads it verified in ``$XDG_STATE_HOME/maif/audit-heads`` (ADR 0088).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_CONFIG_HOME = tempfile.mkdtemp(prefix="maif-test-config-")
os.environ["XDG_CONFIG_HOME"] = _CONFIG_HOME
os.environ["XDG_STATE_HOME"] = os.path.join(_CONFIG_HOME, "state")  # maif audit verify's remembered heads
os.environ.pop("MAIF_MASTER_KEY", None)  # a key exported in the caller's shell must not leak into the tests
atexit.register(shutil.rmtree, _CONFIG_HOME, True)
