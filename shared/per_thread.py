"""Objects kept for the thread that made them: a PySyft client is reused by later logins of the
same account in the same thread (each login would otherwise fetch and build the whole client
API again: about 1 s and 0.65 s of CPU here, plus the server's), and never handed to another
thread (a client is not made to be used by two at once)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

T = TypeVar("T")
KEEP = 8  # per thread, most recently used first out last: a process rarely talks to more
_LOCAL = threading.local()


def kept(key: Hashable, make: Callable[[], T]) -> T:
    """This thread's object for ``key``, made by ``make()`` the first time (the last
    :data:`KEEP` keys of the thread are kept)."""
    store: OrderedDict = vars(_LOCAL).setdefault("store", OrderedDict())
    if key in store:
        store.move_to_end(key)
        return store[key]
    value = store[key] = make()
    while len(store) > KEEP:
        store.popitem(last=False)
    return value
