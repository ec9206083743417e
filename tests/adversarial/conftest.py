"""The integration tests' fixtures (tests/integration/conftest.py: the
`ringmail` server factory, HOST, recv_line...), loaded under another module
name and re-exported, so there is one copy of them."""
import importlib.util
import os

_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration",
                     "conftest.py")
_spec = importlib.util.spec_from_file_location("ringmail_integration_conftest", _path)
_m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_m)

HOST = _m.HOST
recv_line = _m.recv_line
expect_eof = _m.expect_eof
ringmail = _m.ringmail  # fixtures
server = _m.server
