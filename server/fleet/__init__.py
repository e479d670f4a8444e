"""Fleet tooling: a fault-injecting network, and `lianxin simulate`, phones in the field."""

from server.fleet.faults import Faults, FaultyTransport

__all__ = ["Faults", "FaultyTransport"]
