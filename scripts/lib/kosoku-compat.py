#!/usr/bin/env python3
"""Runs kosoku with two fixes to its vendored Autobahn case 12/13 module: under Python 3 the
echoed messages arrive as str, which hashlib refuses ("Strings must be encoded before hashing")
and which the case then calls .decode on, so every compression case errors before it starts.
Here str is turned back into bytes first (UTF-8 for text cases, latin-1, the shim's convention
for py2-era strings, for binary ones); nothing else changes. Arguments are kosoku's."""
import hashlib
import sys

from kosoku import _caseindex, _cli

_caseindex.initialize_shims()
import case12_x_x  # noqa: E402  (importable only after initialize_shims)


class _Sha1:
    def __init__(self):
        self._hash = hashlib.sha1()

    def update(self, data):
        self._hash.update(data.encode("latin-1") if isinstance(data, str) else data)

    def digest(self):
        return self._hash.digest()


class _Hashlib:
    sha1 = _Sha1


case12_x_x.hashlib = _Hashlib

# Text echoes also arrive as str, and the case decodes them as bytes: give it bytes.
_original_on_message = case12_x_x.onMessage


def _on_message(self, msg, binary):
    if isinstance(msg, str):
        msg = msg.encode("utf-8") if not self.TESTDATA["binary"] else msg.encode("latin-1")
    return _original_on_message(self, msg, binary)


for _value in list(vars(case12_x_x).values()):
    if isinstance(_value, list):
        for _case in _value:
            if isinstance(_case, type) and _case.__dict__.get("onMessage") is _original_on_message:
                _case.onMessage = _on_message
sys.argv[0] = "kosoku"
_cli.main()
